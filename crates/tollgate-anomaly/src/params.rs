//! Object ids in a request path: the segments its route template marks as parameters.

use crate::hash::{KeyKind, KeyedHasher};

/// Where a route template's parameters are, worked out once per template (the
/// [`crate::route_index::RouteIndex`] keeps it), so the request path only walks the path segments it hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ParamShape {
    /// No parameter: nothing to hash.
    #[default]
    None,
    /// Bit `i` set: the `i`-th segment from the right is (or contains) a parameter.
    Right(u32),
    /// A wildcard, or a parameter further than 32 segments from the right: the
    /// general walk over the template.
    General,
}

impl ParamShape {
    pub(crate) fn of(template: &str) -> Self {
        if !template.contains('{') {
            return ParamShape::None;
        }
        if template.contains("{*") {
            return ParamShape::General;
        }
        let mut mask = 0u32;
        for (i, t) in template.rsplit('/').enumerate() {
            if t.contains('{') {
                if i >= 32 {
                    return ParamShape::General;
                }
                mask |= 1 << i;
            }
        }
        ParamShape::Right(mask)
    }
}

/// Keyed hashes of the path segments that the route template marks as parameters
/// (`{id}`, or a segment containing one; `{*rest}` takes the rest of the path).
///
/// Without a wildcard, template and path are aligned from the right, so a router
/// nested under a stripped prefix still lines up. Nothing is allocated and no
/// segment value is kept.
pub(crate) struct ParamIds<'a> {
    walk: Walk<'a>,
    hasher: &'a KeyedHasher,
}

enum Walk<'a> {
    Done,
    /// Right-aligned, by a [`ParamShape::Right`] mask: the path not walked yet.
    Mask {
        path: Option<&'a str>,
        mask: u32,
    },
    /// Right-aligned, template and path side by side.
    Right {
        template: std::str::RSplit<'a, char>,
        path: std::str::RSplit<'a, char>,
    },
    /// Left-aligned, for templates with a trailing wildcard.
    Wildcard {
        template: std::str::Split<'a, char>,
        rest: &'a str,
    },
}

impl<'a> ParamIds<'a> {
    #[cfg(test)]
    pub(crate) fn new(template: &'a str, path: &'a str, hasher: &'a KeyedHasher) -> Self {
        Self::with_shape(ParamShape::of(template), template, path, hasher)
    }

    /// The ids of `path` under a template of this shape (`template` is read only
    /// for [`ParamShape::General`]).
    pub(crate) fn with_shape(
        shape: ParamShape,
        template: &'a str,
        path: &'a str,
        hasher: &'a KeyedHasher,
    ) -> Self {
        let walk = match shape {
            ParamShape::None => Walk::Done,
            ParamShape::Right(mask) => Walk::Mask {
                path: Some(path),
                mask,
            },
            ParamShape::General if template.contains("{*") => Walk::Wildcard {
                template: template.trim_start_matches('/').split('/'),
                rest: path.trim_start_matches('/'),
            },
            ParamShape::General => Walk::Right {
                template: template.rsplit('/'),
                path: path.rsplit('/'),
            },
        };
        ParamIds { walk, hasher }
    }
}

/// The last `/`-separated segment of `*rest`, as `rsplit('/')` yields them.
pub(crate) fn next_back<'a>(rest: &mut Option<&'a str>) -> Option<&'a str> {
    let r = (*rest)?;
    // Segments are short: a plain scan beats `memrchr`'s setup.
    match r.bytes().rposition(|b| b == b'/') {
        Some(i) => {
            *rest = Some(&r[..i]);
            Some(&r[i + 1..])
        }
        None => {
            *rest = None;
            Some(r)
        }
    }
}

impl Iterator for ParamIds<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let hasher = self.hasher;
        let id = |segment: &str| hasher.hash_bytes(KeyKind::ObjectId, segment.as_bytes());
        match &mut self.walk {
            Walk::Done => None,
            Walk::Mask { path, mask } => loop {
                if *mask == 0 {
                    return None;
                }
                let segment = next_back(path)?;
                let param = *mask & 1 != 0;
                *mask >>= 1;
                if param {
                    return Some(id(segment));
                }
            },
            Walk::Right { template, path } => loop {
                let t = template.next()?;
                let p = path.next()?;
                if t.contains('{') {
                    return Some(id(p));
                }
            },
            Walk::Wildcard { template, rest } => loop {
                let t = template.next()?;
                if t.starts_with("{*") {
                    let value = *rest;
                    self.walk = Walk::Done;
                    return Some(id(value));
                }
                let (segment, after) = rest.split_once('/').unwrap_or((rest, ""));
                *rest = after;
                if t.contains('{') {
                    return Some(id(segment));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(template: &str, path: &str) -> Vec<u64> {
        let h = KeyedHasher::new([5; 16]);
        let fast: Vec<u64> = ParamIds::new(template, path, &h).collect();
        // The general walk over the template gives the same ids.
        let general: Vec<u64> = ParamIds::with_shape(ParamShape::General, template, path, &h).collect();
        assert_eq!(fast, general, "{template} {path}");
        fast
    }

    fn id(value: &str) -> u64 {
        KeyedHasher::new([5; 16]).hash_bytes(KeyKind::ObjectId, value.as_bytes())
    }

    #[test]
    fn param_segments_are_hashed() {
        assert_eq!(ids("/v1/items/{id}", "/v1/items/42"), vec![id("42")]);
        assert_eq!(
            ids("/v1/users/{user}/orders/{order}", "/v1/users/7/orders/9"),
            vec![id("9"), id("7")]
        );
        assert_eq!(ids("/v1/items", "/v1/items"), Vec::<u64>::new());
        // A nested router saw the path without its prefix.
        assert_eq!(ids("/api/v1/items/{id}", "/v1/items/42"), vec![id("42")]);
        assert_eq!(ids("/files/{*path}", "/files/a/b/c.txt"), vec![id("a/b/c.txt")]);
        assert_eq!(
            ids("/o/{org}/files/{*path}", "/o/x/files/a/b"),
            vec![id("x"), id("a/b")]
        );
        assert_eq!(ids("/items/{id}.json", "/items/5.json"), vec![id("5.json")]);
        // Hostile input: more or fewer segments than the template.
        assert_eq!(ids("/items/{id}", "/"), vec![id("")]);
        assert_eq!(ids("/files/{*path}", ""), vec![id("")]);
    }
}
