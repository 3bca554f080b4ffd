//! Counters the request path adds to without a locked instruction.

use std::sync::atomic::{AtomicU64, Ordering};

use thread_local::ThreadLocal;

/// A table of counters kept as one copy per thread: a thread adds to its own copy
/// with a plain load and store (it is the copy's only writer, so no add is lost),
/// and a reader adds the copies up. A `lock xadd` costs some twenty cycles even
/// uncontended, and an observer counts five to eight things per request. A thread
/// that exits leaves its copy to the next thread that starts, so no count is lost.
///
/// Readers see each copy's counters as its thread last stored them: a sum is exact
/// once the adds it should include have returned.
pub(crate) struct Counts {
    len: usize,
    copies: ThreadLocal<Box<[AtomicU64]>>,
}

impl Counts {
    /// `len` counters at zero.
    pub(crate) fn new(len: usize) -> Self {
        Counts {
            len,
            copies: ThreadLocal::new(),
        }
    }

    /// The calling thread's copy, to add to.
    #[inline]
    pub(crate) fn local(&self) -> Local<'_> {
        Local(
            self.copies
                .get_or(|| (0..self.len).map(|_| AtomicU64::new(0)).collect()),
        )
    }

    /// Every thread's copy, to read (and sum).
    pub(crate) fn copies(&self) -> impl Iterator<Item = Local<'_>> {
        self.copies.iter().map(|copy| Local(copy))
    }

    /// How many counters the table holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// One thread's copy of a [`Counts`] table.
#[derive(Clone, Copy)]
pub(crate) struct Local<'a>(&'a [AtomicU64]);

impl Local<'_> {
    /// Adds `n` to counter `i`. Only the copy's own thread may call it.
    #[inline]
    pub(crate) fn add(self, i: usize, n: u64) {
        if let Some(c) = self.0.get(i) {
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
    }

    /// Sets counter `i` to `n`. Only the copy's own thread may call it.
    #[inline]
    pub(crate) fn set(self, i: usize, n: u64) {
        if let Some(c) = self.0.get(i) {
            c.store(n, Ordering::Release);
        }
    }

    /// Counter `i` (0 beyond the table).
    #[inline]
    pub(crate) fn get(self, i: usize) -> u64 {
        self.0.get(i).map_or(0, |c| c.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn sum(counts: &Counts, i: usize) -> u64 {
        counts.copies().map(|copy| copy.get(i)).sum()
    }

    #[test]
    fn adds_from_many_threads_sum_exactly() {
        let counts = Arc::new(Counts::new(3));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let local = counts.local();
                        local.add(0, 1);
                        local.add(1 + t % 2, 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(sum(&counts, 0), 80_000);
        assert_eq!(sum(&counts, 1), 80_000);
        assert_eq!(sum(&counts, 2), 80_000);
        assert_eq!(sum(&counts, 7), 0, "beyond the table");
        // A thread started after the others exited reuses a copy: nothing is lost.
        let again = counts.clone();
        std::thread::spawn(move || again.local().add(0, 5))
            .join()
            .unwrap();
        assert_eq!(sum(&counts, 0), 80_005);
    }
}
