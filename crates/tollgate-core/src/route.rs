//! Per-route settings: one table of route patterns, resolved once per request.
//!
//! A [`RouteTable`] holds the route patterns an application configures
//! (`"/v1/items/{id}"`, `"/admin/*"`, and the `default`). A [`RouteMap<T>`] gives
//! each pattern a value of one layer's own type (the auth layer's requirement, the
//! rate limiter's rule, ...). Every layer of one stack holds a map over the same
//! table, so the outermost layer resolves the request's route once (from axum's
//! [`MatchedPath`]) and inserts a [`Route`]; the others index their own values with it.
//!
//! Matching, most specific first:
//! 1. a pattern equal to the route template (`MatchedPath`);
//! 2. the longest wildcard pattern `"/prefix/*"` whose prefix starts the template
//!    (`"/admin/*"` matches `/admin`, `/admin/freezes` and `/admin/{id}/notes`);
//! 3. the `default` entry.
//!
//! A request no route matched (axum's fallback) has no template: it is matched
//! against the wildcard patterns by its raw path, so `"/admin/*"` also covers
//! `/admin/anything-unrouted`.
//!
//! ```
//! use axum::extract::MatchedPath;
//! use tollgate_core::route::RouteMap;
//!
//! let limits = RouteMap::new(
//!     [("/health", 0u32), ("/admin/*", 10), ("/admin/bulk", 1)],
//!     100,
//! )
//! .unwrap();
//! assert_eq!(*limits.get_for_path(Some("/health"), "/health"), 0);
//! assert_eq!(*limits.get_for_path(Some("/admin/{id}"), "/admin/7"), 10);
//! assert_eq!(*limits.get_for_path(Some("/admin/bulk"), "/admin/bulk"), 1);
//! assert_eq!(*limits.get_for_path(Some("/v1/items/{id}"), "/v1/items/7"), 100);
//! assert_eq!(*limits.get_for_path(None, "/admin/nope"), 10);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::extract::MatchedPath;
use http::{Extensions, Request};

use crate::carry::CarryExt;
use crate::config::ConfigError;

/// The key of the entry that applies to routes no other pattern matches.
pub const DEFAULT_ROUTE: &str = "default";

/// The most patterns one table holds.
pub const MAX_ROUTES: usize = 4096;

/// A position in a [`RouteTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteId(u16);

impl RouteId {
    /// The `default` entry, present in every table.
    pub const DEFAULT: RouteId = RouteId(0);

    /// The position, for indexing a layer's own per-route values.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A request's resolved route, carried in the request ([`CarryExt`]): which entry of
/// which table matched. Set once by the outermost layer of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    table: usize,
    id: RouteId,
}

impl Route {
    /// The matched entry.
    pub fn id(self) -> RouteId {
        self.id
    }
}

struct Table {
    /// Patterns by position; position 0 is `default`.
    patterns: Box<[Box<str>]>,
    exact: HashMap<Box<str>, RouteId>,
    /// Wildcard prefixes without their `/*`, longest first.
    prefixes: Box<[(Box<str>, RouteId)]>,
}

/// The route patterns of one stack, compiled for lookup. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct RouteTable {
    table: Arc<Table>,
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.table.patterns.iter()).finish()
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable::new(std::iter::empty::<&str>()).expect("an empty table is valid")
    }
}

impl RouteTable {
    /// A table of these patterns plus `default` (which may also be listed).
    ///
    /// A pattern is an axum route template (`/v1/items/{id}`) or a prefix ending in
    /// `/*`; `*` appears nowhere else. Errors name the pattern at fault.
    pub fn new<I, P>(patterns: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let mut list: Vec<Box<str>> = vec![DEFAULT_ROUTE.into()];
        let mut exact = HashMap::new();
        let mut prefixes: Vec<(Box<str>, RouteId)> = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            if pattern == DEFAULT_ROUTE {
                continue;
            }
            let setting = || format!("routes.\"{pattern}\"");
            if !pattern.starts_with('/') {
                return Err(ConfigError::new(
                    setting(),
                    "a route pattern starts with `/` (or is `default`)",
                ));
            }
            if list.len() >= MAX_ROUTES {
                return Err(ConfigError::new(
                    setting(),
                    format!("at most {MAX_ROUTES} route patterns"),
                ));
            }
            let id = RouteId(list.len() as u16);
            let duplicate = match pattern.strip_suffix("/*") {
                Some(prefix) if !prefix.contains('*') => {
                    let duplicate = prefixes.iter().any(|(p, _)| **p == *prefix);
                    prefixes.push((Box::<str>::from(prefix), id));
                    duplicate
                }
                _ if pattern.contains('*') && !pattern.contains("{*") => {
                    return Err(ConfigError::new(
                        setting(),
                        "`*` only as a final `/*` segment (or in an axum `{*rest}` parameter)",
                    ));
                }
                _ => exact.insert(Box::<str>::from(pattern), id).is_some(),
            };
            if duplicate {
                return Err(ConfigError::new(setting(), "the pattern is listed twice"));
            }
            list.push(pattern.into());
        }
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(RouteTable {
            table: Arc::new(Table {
                patterns: list.into(),
                exact,
                prefixes: prefixes.into(),
            }),
        })
    }

    /// How many entries, `default` included.
    pub fn len(&self) -> usize {
        self.table.patterns.len()
    }

    /// True when only `default` is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 1
    }

    /// The patterns by position (`default` first).
    pub fn patterns(&self) -> impl Iterator<Item = (RouteId, &str)> {
        self.table
            .patterns
            .iter()
            .enumerate()
            .map(|(i, p)| (RouteId(i as u16), &**p))
    }

    /// The entry for a route `template` (`None` when no route matched) and the raw `path`.
    pub fn resolve_path(&self, template: Option<&str>, path: &str) -> RouteId {
        let t = &*self.table;
        if let Some(template) = template
            && let Some(id) = t.exact.get(template)
        {
            return *id;
        }
        let subject = template.unwrap_or(path);
        t.prefixes
            .iter()
            .find(|(prefix, _)| under(subject, prefix))
            .map_or(RouteId::DEFAULT, |(_, id)| *id)
    }

    /// The request's entry: the [`Route`] in its extensions when this table made it,
    /// else resolved from `MatchedPath` and the path.
    pub fn resolve(&self, extensions: &Extensions, path: &str) -> RouteId {
        if self.is_empty() {
            return RouteId::DEFAULT;
        }
        match extensions.carried::<Route>() {
            Some(route) if route.table == self.id() => route.id,
            _ => self.resolve_path(extensions.get::<MatchedPath>().map(MatchedPath::as_str), path),
        }
    }

    /// Resolves the request's entry and records it in its extensions as a [`Route`],
    /// for the inner layers. Called by the outermost layer of a stack.
    pub fn resolve_and_insert<B>(&self, req: &mut Request<B>) -> RouteId {
        let id = self.resolve(req.extensions(), req.uri().path());
        if !self.is_empty() {
            req.extensions_mut().carry(Route { table: self.id(), id });
        }
        id
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.table) as usize
    }
}

/// True if `subject` is `prefix` or lies under it (`/admin` and `/admin/x` under `/admin`).
fn under(subject: &str, prefix: &str) -> bool {
    match subject.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

/// One layer's value for every entry of a [`RouteTable`]. Cheap to clone.
///
/// Build it from `(pattern, value)` pairs for a layer used alone, or with
/// [`RouteMap::from_table`] over a stack's shared table.
#[derive(Clone)]
pub struct RouteMap<T> {
    table: RouteTable,
    values: Arc<[T]>,
}

impl<T: fmt::Debug> fmt::Debug for RouteMap<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.table.table.patterns.iter().zip(self.values.iter()))
            .finish()
    }
}

impl<T: Default> Default for RouteMap<T> {
    fn default() -> Self {
        RouteMap::uniform(T::default())
    }
}

impl<T> RouteMap<T> {
    /// A map of these patterns and values, with `default` for every other route.
    pub fn new<I, P>(routes: I, default: T) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (P, T)>,
        P: AsRef<str>,
    {
        let (patterns, values): (Vec<P>, Vec<T>) = routes.into_iter().unzip();
        let table = RouteTable::new(patterns.iter().map(AsRef::as_ref))?;
        let mut values: Vec<Option<T>> = values.into_iter().map(Some).collect();
        let mut default = Some(default);
        let ordered: Vec<T> = table
            .patterns()
            .map(|(id, pattern)| match id {
                RouteId::DEFAULT => {
                    // A listed `default` wins over the argument.
                    let listed = patterns.iter().position(|p| p.as_ref() == DEFAULT_ROUTE);
                    match listed {
                        Some(i) => values[i].take(),
                        None => default.take(),
                    }
                    .expect("default taken once")
                }
                _ => {
                    let i = patterns
                        .iter()
                        .position(|p| p.as_ref() == pattern)
                        .expect("every table pattern came from the list");
                    values[i].take().expect("each pattern listed once")
                }
            })
            .collect();
        Ok(RouteMap {
            table,
            values: ordered.into(),
        })
    }

    /// A map with one value for every route.
    pub fn uniform(value: T) -> Self {
        RouteMap {
            table: RouteTable::default(),
            values: Arc::from([value]),
        }
    }

    /// A map over `table`, with the value `f` gives each pattern.
    pub fn from_table(table: &RouteTable, mut f: impl FnMut(RouteId, &str) -> T) -> Self {
        let values: Vec<T> = table.patterns().map(|(id, p)| f(id, p)).collect();
        RouteMap {
            table: table.clone(),
            values: values.into(),
        }
    }

    /// The same routes with each value mapped.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> RouteMap<U> {
        RouteMap {
            table: self.table.clone(),
            values: self.values.iter().map(&mut f).collect(),
        }
    }

    /// The table the map is over.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The value of an entry.
    pub fn get(&self, id: RouteId) -> &T {
        &self.values[id.index()]
    }

    /// The value for the `default` entry.
    pub fn default_value(&self) -> &T {
        &self.values[0]
    }

    /// Every entry's pattern and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.table.patterns().map(|(id, p)| (p, &self.values[id.index()]))
    }

    /// The value for a route template (`None` when no route matched) and raw path.
    pub fn get_for_path(&self, template: Option<&str>, path: &str) -> &T {
        self.get(self.table.resolve_path(template, path))
    }

    /// The value for a request, by its [`Route`] or its `MatchedPath`.
    pub fn get_for<B>(&self, req: &Request<B>) -> &T {
        self.get(self.table.resolve(req.extensions(), req.uri().path()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn most_specific_wins() {
        let table = RouteTable::new(["/admin/*", "/admin/bulk", "/*", "/v1/items/{id}"]).unwrap();
        let at = |t: Option<&str>, p: &str| table.patterns().nth(table.resolve_path(t, p).index()).unwrap().1;
        assert_eq!(at(Some("/admin/bulk"), "/admin/bulk"), "/admin/bulk");
        assert_eq!(at(Some("/admin/{id}"), "/admin/3"), "/admin/*");
        assert_eq!(at(Some("/admin"), "/admin"), "/admin/*");
        assert_eq!(at(Some("/administrator"), "/administrator"), "/*");
        assert_eq!(at(Some("/v1/items/{id}"), "/v1/items/3"), "/v1/items/{id}");
        assert_eq!(at(None, "/admin/unrouted"), "/admin/*");
        let no_catch_all = RouteTable::new(["/admin/*"]).unwrap();
        assert_eq!(
            no_catch_all.resolve_path(Some("/administrator"), "/administrator"),
            RouteId::DEFAULT
        );
        assert_eq!(no_catch_all.resolve_path(None, "/v1"), RouteId::DEFAULT);
    }

    #[test]
    fn bad_patterns_are_refused_by_name() {
        for bad in ["health", "/a*b", "/x/*/y", "*"] {
            let err = RouteTable::new([bad]).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        let err = RouteTable::new(["/x", "/x"]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        assert!(RouteTable::new(["/files/{*rest}"]).is_ok());
    }

    #[test]
    fn a_route_from_another_table_is_not_trusted() {
        let a = RouteMap::new([("/x/*", 1)], 0).unwrap();
        let b = RouteMap::new([("/y/*", 2)], 0).unwrap();
        let mut req = request("/y/1");
        a.table().resolve_and_insert(&mut req);
        assert_eq!(*a.get_for(&req), 0);
        // b ignores a's Route and resolves on its own.
        assert_eq!(*b.get_for(&req), 2);
        // A map over a's table reuses a's Route.
        let c = a.map(|v| v * 10);
        let mut req = request("/x/1");
        a.table().resolve_and_insert(&mut req);
        assert_eq!(*c.get_for(&req), 10);
    }

    #[test]
    fn listed_default_wins() {
        let m = RouteMap::new([("default", 5), ("/a", 1)], 9).unwrap();
        assert_eq!(*m.default_value(), 5);
        assert_eq!(*m.get_for_path(Some("/b"), "/b"), 5);
        assert_eq!(m.iter().count(), 2);
    }
}
