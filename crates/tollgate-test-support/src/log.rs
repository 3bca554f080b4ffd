//! Log capture: a `tracing` writer into a shared in-memory buffer.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields};
use tracing_subscriber::fmt::{MakeWriter, SubscriberBuilder};

/// Every byte a `tracing` subscriber writes, kept in memory.
///
/// Clones share one buffer: hand a clone to the subscriber (it is a [`MakeWriter`],
/// and an [`io::Write`]) and read the text from the original. Works with
/// `tracing_subscriber::fmt` and with any layer that takes a `MakeWriter`, such as
/// `tollgate_privacy::json_layer`.
///
/// ```
/// use tollgate_test_support::LogCapture;
///
/// let capture = LogCapture::new();
/// let subscriber = capture.json_subscriber().with_max_level(tracing::Level::DEBUG).finish();
/// tracing::subscriber::with_default(subscriber, || {
///     tracing::debug!(target: "tollgate::request", "seen");
///     tracing::trace!("filtered out");
/// });
/// let lines = capture.lines_with_target("tollgate::request");
/// assert_eq!(lines.len(), 1);
/// assert!(!capture.text().contains("filtered out"));
/// ```
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far, as text.
    ///
    /// # Panics
    /// If the output is not UTF-8 (the subscribers write UTF-8; anything else is a bug).
    pub fn text(&self) -> String {
        String::from_utf8(self.bytes().clone()).expect("log output is UTF-8")
    }

    /// Every line written so far, each parsed as one JSON document (the shape of
    /// [`LogCapture::json_subscriber`] and of `tollgate_privacy::json_layer`).
    ///
    /// # Panics
    /// On a line that is not JSON, naming it.
    pub fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
            .collect()
    }

    /// The JSON lines whose `target` is `target` (for instance the request lines,
    /// `tollgate_privacy::TARGET`).
    pub fn lines_with_target(&self, target: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["target"] == target)
            .collect()
    }

    /// A JSON `fmt` subscriber writing into this capture, every level enabled.
    ///
    /// Adjust it before `.finish()`: `.with_span_events(FmtSpan::CLOSE)`,
    /// `.with_current_span(true)`, `.with_max_level(Level::DEBUG)`, `.with_env_filter(..)`.
    pub fn json_subscriber(&self) -> SubscriberBuilder<JsonFields, Format<Json>, LevelFilter, LogCapture> {
        tracing_subscriber::fmt()
            .json()
            .with_max_level(LevelFilter::TRACE)
            .with_writer(self.clone())
    }

    /// Makes [`LogCapture::json_subscriber`] this thread's default subscriber until the
    /// guard drops. Only events emitted on this thread are captured: a test on a
    /// multi-threaded runtime, or one whose server runs elsewhere, wants
    /// [`serve_captured`](crate::serve_captured) instead.
    pub fn set_default(&self) -> DefaultGuard {
        tracing::subscriber::set_default(self.json_subscriber().finish())
    }

    fn bytes(&self) -> MutexGuard<'_, Vec<u8>> {
        // A test that panicked mid-write still leaves readable output.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for LogCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogCapture")
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

impl io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn clones_share_one_buffer() {
        let capture = LogCapture::new();
        let mut writer = capture.make_writer();
        writer.write_all(b"{\"target\":\"a\"}\n").unwrap();
        capture.clone().write_all(b"{\"target\":\"b\"}\n").unwrap();
        assert_eq!(capture.text(), "{\"target\":\"a\"}\n{\"target\":\"b\"}\n");
        assert_eq!(capture.lines().len(), 2);
        assert_eq!(capture.lines_with_target("b").len(), 1);
        assert_eq!(format!("{capture:?}"), "LogCapture { bytes: 30 }");
    }

    #[test]
    fn set_default_captures_every_level_with_span_fields() {
        let capture = LogCapture::new();
        {
            let _guard = capture.set_default();
            let span = tracing::info_span!("request", route = "/v1/items/{id}");
            let _entered = span.enter();
            tracing::trace!(target: "deep", "trace level");
        }
        tracing::info!("after the guard: not captured");
        let lines = capture.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["level"], "TRACE");
        assert_eq!(lines[0]["target"], "deep");
        assert_eq!(lines[0]["span"]["route"], "/v1/items/{id}");
    }

    #[test]
    #[should_panic(expected = "not JSON")]
    fn lines_names_a_line_that_is_not_json() {
        let capture = LogCapture::new();
        capture.clone().write_all(b"plain text\n").unwrap();
        capture.lines();
    }
}
