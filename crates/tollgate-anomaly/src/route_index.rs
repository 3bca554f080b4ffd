//! The route templates the engine has seen: a small index per template for the
//! transition model, and where each template's parameters are.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::params::ParamShape;

/// What the request path needs to know about a route template, found with one lookup.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RouteEntry {
    /// The index in the transition model.
    pub(crate) idx: u8,
    /// Where the template's parameters are, for the enumeration detector.
    pub(crate) params: ParamShape,
}

/// The hash of a route template in the [`RouteIndex`]. Templates are few, come from
/// the router (not from clients) and are short: a multiplicative hash is enough,
/// and much cheaper than SipHash.
fn template_hash(template: &str) -> u64 {
    let mut h = template.len() as u64;
    for chunk in template.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (h >> 32)
}

/// A template and its entry, in a [`RouteIndex`] slot.
type Indexed = (Box<str>, RouteEntry);

/// Maps route templates to small indices (for the transition model) and their
/// parameter shape (for the enumeration detector). Bounded: past `max_routes` templates, new
/// ones share the `other` index.
///
/// An append-only open-addressing table that is never more than half full: a
/// lookup is a hash and a probe or two without any lock or reference count; adding
/// a template takes a mutex (once per template).
#[derive(Debug)]
pub(crate) struct RouteIndex {
    slots: Box<[OnceLock<Indexed>]>,
    mask: usize,
    len: AtomicUsize,
    adding: Mutex<()>,
    max_routes: usize,
}

impl RouteIndex {
    /// An index that gives `templates` (a stack's configured route templates) the
    /// first indices, then learns templates as requests bring them, up to `max_routes`.
    pub(crate) fn new<T: AsRef<str>>(max_routes: usize, templates: impl IntoIterator<Item = T>) -> Self {
        let templates: Vec<T> = templates.into_iter().collect();
        // Configured templates, then at most `max_routes` learned ones.
        let capacity = (2 * (templates.len() + max_routes)).next_power_of_two().max(8);
        let index = RouteIndex {
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            mask: capacity - 1,
            len: AtomicUsize::new(0),
            adding: Mutex::new(()),
            max_routes,
        };
        for route in &templates {
            let route = route.as_ref();
            let next = index.len.load(Ordering::Relaxed);
            let idx = if next < max_routes {
                next as u8
            } else {
                max_routes as u8
            };
            let entry = RouteEntry {
                idx,
                params: ParamShape::of(route),
            };
            if let Err(i) = index.find(route) {
                index.put(i, route, entry);
            }
        }
        index
    }

    /// The slot holding `template`, or the free slot where it would go.
    fn find(&self, template: &str) -> Result<RouteEntry, usize> {
        let mut i = template_hash(template) as usize & self.mask;
        loop {
            match self.slots[i].get() {
                None => return Err(i),
                Some((t, entry)) if **t == *template => return Ok(*entry),
                Some(_) => i = (i + 1) & self.mask,
            }
        }
    }

    fn put(&self, slot: usize, template: &str, entry: RouteEntry) {
        if self.slots[slot].set((template.into(), entry)).is_ok() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The index shared by unmatched requests and templates past the cap.
    pub(crate) fn other(&self) -> u8 {
        self.max_routes as u8
    }

    /// The entry of `template` (`None`: unmatched).
    pub(crate) fn lookup(&self, template: Option<&str>) -> RouteEntry {
        let Some(template) = template else {
            return RouteEntry {
                idx: self.other(),
                params: ParamShape::None,
            };
        };
        if let Ok(found) = self.find(template) {
            return found;
        }
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        match self.find(template) {
            Ok(found) => found,
            Err(_) if self.len.load(Ordering::Relaxed) >= self.max_routes => RouteEntry {
                idx: self.other(),
                params: ParamShape::of(template),
            },
            Err(slot) => {
                let entry = RouteEntry {
                    idx: self.len.load(Ordering::Relaxed) as u8,
                    params: ParamShape::of(template),
                };
                self.put(slot, template, entry);
                entry
            }
        }
    }

    /// The number of templates indexed.
    pub(crate) fn routes(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_index_is_bounded() {
        let idx = RouteIndex::new(3, [""; 0]);
        assert_eq!(idx.lookup(Some("/a")).idx, 0);
        assert_eq!(idx.lookup(Some("/b")).idx, 1);
        assert_eq!(idx.lookup(Some("/a")).idx, 0);
        assert_eq!(idx.lookup(Some("/c")).idx, 2);
        assert_eq!(idx.lookup(Some("/d")).idx, idx.other());
        assert_eq!(idx.lookup(None).idx, idx.other());
        assert_eq!(idx.routes(), 3);

        // Configured templates come first, and count towards the cap.
        let templates = (0..5).map(|i| format!("/c{i}/{{id}}"));
        let idx = RouteIndex::new(3, templates);
        assert_eq!(idx.routes(), 5);
        for i in 0..5 {
            let e = idx.lookup(Some(&format!("/c{i}/{{id}}")));
            assert_eq!(e.idx, (i as u8).min(3));
            assert_eq!(e.params, ParamShape::Right(1));
        }
        assert_eq!(idx.lookup(Some("/new")).idx, idx.other());
        assert_eq!(idx.routes(), 5);

        // Many templates from many threads: each gets one index, the first `max` distinct.
        let idx = RouteIndex::new(200, [""; 0]);
        std::thread::scope(|s| {
            for t in 0..4 {
                let idx = &idx;
                s.spawn(move || {
                    for i in 0..300 {
                        idx.lookup(Some(&format!("/r{}", (i * 7 + t * 13) % 300)));
                    }
                });
            }
        });
        assert_eq!(idx.routes(), 200);
        let mut seen: Vec<u8> = (0..300)
            .map(|i| idx.lookup(Some(&format!("/r{i}"))).idx)
            .filter(|&i| i != idx.other())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..200).map(|i| i as u8).collect::<Vec<_>>());
    }
}
