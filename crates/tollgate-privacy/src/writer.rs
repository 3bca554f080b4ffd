//! [`BatchWriter`]: log lines appended to a shared buffer and written out in batches.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Buffered bytes above which the writing thread writes the batch itself, so memory
/// stays bounded when the output cannot keep up.
const HIGH_WATER: usize = 1 << 20;

struct Shared {
    buffer: Mutex<Vec<u8>>,
    output: Mutex<Box<dyn Write + Send>>,
    closed: AtomicBool,
}

impl Shared {
    fn lock_buffer(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `batch` out and empties it. Output errors (a closed stdout) drop the batch.
    fn write_out(&self, batch: &mut Vec<u8>) {
        if batch.is_empty() {
            return;
        }
        let mut out = self
            .output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = out.write_all(batch).and_then(|()| out.flush());
        batch.clear();
    }
}

/// A [`MakeWriter`] that appends each log line to a shared buffer and lets a
/// background thread write the buffer out every `interval` (50 ms for
/// [`BatchWriter::stdout`]): one `write` system call per batch instead of per line,
/// and no thread wake-up per line. Lines reach the output at most one interval late;
/// dropping the [`FlushGuard`] writes what is left.
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// let (writer, _flush_on_exit) = tollgate_privacy::BatchWriter::stdout();
/// let subscriber = tracing_subscriber::registry().with(tollgate_privacy::json_layer(writer));
/// # let _ = subscriber;
/// ```
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter").finish_non_exhaustive()
    }
}

/// Writes the remaining lines and stops the background thread when dropped.
#[must_use = "dropping the guard stops the writer; keep it for the life of the program"]
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FlushGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushGuard").finish_non_exhaustive()
    }
}

impl BatchWriter {
    /// A batch writer over standard output, flushing every 50 ms.
    pub fn stdout() -> (BatchWriter, FlushGuard) {
        BatchWriter::new(io::stdout(), Duration::from_millis(50))
    }

    /// A batch writer over standard error, flushing every 50 ms (for programs whose
    /// standard output carries something else).
    pub fn stderr() -> (BatchWriter, FlushGuard) {
        BatchWriter::new(io::stderr(), Duration::from_millis(50))
    }

    /// A batch writer over `output`, flushing every `interval`.
    pub fn new(output: impl Write + Send + 'static, interval: Duration) -> (BatchWriter, FlushGuard) {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Vec::with_capacity(64 * 1024)),
            output: Mutex::new(Box::new(output)),
            closed: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tollgate-log".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(64 * 1024);
                loop {
                    std::thread::park_timeout(interval);
                    let closed = worker.closed.load(Ordering::Acquire);
                    std::mem::swap(&mut *worker.lock_buffer(), &mut batch);
                    worker.write_out(&mut batch);
                    if closed {
                        break;
                    }
                }
            })
            .expect("the log writer thread starts");
        let guard = FlushGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        (BatchWriter { shared }, guard)
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// One line's writer, from [`BatchWriter::make_writer`].
#[derive(Debug)]
pub struct BatchLine<'a>(&'a BatchWriter);

impl Write for BatchLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let shared = &self.0.shared;
        let mut buffer = shared.lock_buffer();
        buffer.extend_from_slice(bytes);
        if buffer.len() >= HIGH_WATER {
            let mut batch = std::mem::take(&mut *buffer);
            drop(buffer);
            shared.write_out(&mut batch);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        BatchLine(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(b);
            s.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_batches_and_all_on_drop() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::new(sink.clone(), Duration::from_secs(3600));
        for i in 0..1000 {
            writeln!(writer.make_writer(), "line {i}").unwrap();
        }
        assert_eq!(sink.0.lock().unwrap().1, 0, "nothing written before the interval");
        drop(guard);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert_eq!(text.lines().last(), Some("line 999"));
        assert_eq!(writes, 1);
    }

    #[test]
    fn the_buffer_is_bounded() {
        let sink = Sink::default();
        let (writer, _guard) = BatchWriter::new(sink.clone(), Duration::from_secs(3600));
        let line = vec![b'x'; 4096];
        for _ in 0..(HIGH_WATER / 4096 * 3) {
            writer.make_writer().write_all(&line).unwrap();
        }
        assert!(writer.shared.lock_buffer().len() < HIGH_WATER);
        assert!(sink.0.lock().unwrap().1 >= 2);
    }

    #[test]
    fn the_interval_flushes() {
        let sink = Sink::default();
        let (writer, _guard) = BatchWriter::new(sink.clone(), Duration::from_millis(10));
        writeln!(writer.make_writer(), "soon").unwrap();
        for _ in 0..200 {
            if !sink.0.lock().unwrap().0.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the line was not written within a second");
    }
}
