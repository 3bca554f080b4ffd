//! Recording request-span fields with one call to the subscriber. Every layer records
//! what it learned into the request span through [`record_current`].

use std::cell::{Cell, RefCell};
use std::sync::RwLock;

use thread_local::ThreadLocal;
use tracing::field::{Field, FieldSet, Value};
use tracing::span::{Id, Record};
use tracing::{Dispatch, Metadata};

/// Records `values` (field name, value) in the current span, as `Span::current()`
/// followed by one `Span::record` per value would, with one call to the subscriber
/// and no span handle: `Span::current()` takes a reference on the span in the
/// registry and dropping the handle releases it, and every `record` is a lookup of
/// its own. Names the span does not declare are skipped, as `Span::record` skips them.
///
/// ```
/// use tollgate_core::{fields, span::record_current};
///
/// let span = tracing::info_span!("request", tier = tracing::field::Empty);
/// span.in_scope(|| record_current([(fields::TIER, &"pro" as &dyn tracing::Value)]));
/// ```
pub fn record_current<const N: usize>(values: [(&'static str, &dyn Value); N]) {
    tracing::dispatcher::get_default(|dispatch| {
        let Some((id, meta)) = dispatch.current_span().into_inner() else {
            return;
        };
        let site = std::ptr::from_ref(meta) as usize;
        let names = values.map(|(name, _)| name);
        // The fields of these names in this span, found before (and borrowed, not cloned).
        let done = FOUND.with_borrow(|found| {
            let f = found.iter().find(|f| f.is(site, &names))?;
            record(dispatch, &id, meta, &f.fields, &values);
            Some(())
        });
        if done.is_some() {
            return;
        }
        let fields: Box<[Option<Field>]> = names.iter().map(|name| meta.fields().field(*name)).collect();
        record(dispatch, &id, meta, &fields, &values);
        FOUND.with(|found| {
            // Not remembered if a subscriber's own recording is under way on this thread.
            if let Ok(mut found) = found.try_borrow_mut()
                && found.len() < MAX_FOUND
            {
                found.push(Found {
                    site,
                    names: names.into(),
                    fields,
                });
            }
        });
    });
}

/// A value worked out once per span callsite (from its field set, which lives as
/// long as the program) and found again by the field set's address: first in the
/// calling thread's memo of its last callsite (one comparison, no shared write: nearly
/// every lookup is for the request span), then in a shared list under a read lock.
///
/// ```
/// use tollgate_core::span::PerCallsite;
///
/// static WIDTH: PerCallsite<usize> = PerCallsite::new();
/// let span = tracing::info_span!("request", route = tracing::field::Empty);
/// let fields = span.metadata().map(|m| m.fields());
/// if let Some(fields) = fields {
///     assert_eq!(WIDTH.get_or_insert_with(fields, || fields.len()), 1);
///     assert_eq!(WIDTH.get_or_insert_with(fields, || unreachable!()), 1);
/// }
/// ```
pub struct PerCallsite<T: Copy + Send + Sync + 'static> {
    memo: ThreadLocal<Cell<Option<(usize, T)>>>,
    all: RwLock<Vec<(usize, T)>>,
}

impl<T: Copy + Send + Sync + 'static> PerCallsite<T> {
    /// An empty cache (usable in a `static`).
    pub const fn new() -> Self {
        PerCallsite {
            memo: ThreadLocal::new(),
            all: RwLock::new(Vec::new()),
        }
    }

    /// The value for the callsite of `fields`, made with `make` the first time.
    pub fn get_or_insert_with(&self, fields: &'static FieldSet, make: impl FnOnce() -> T) -> T {
        let site = std::ptr::from_ref(fields) as usize;
        let memo = self.memo.get_or(|| Cell::new(None));
        if let Some((last, value)) = memo.get()
            && last == site
        {
            return value;
        }
        let find = |all: &[(usize, T)]| all.iter().find(|(s, _)| *s == site).map(|(_, v)| *v);
        let found = find(&self.all.read().unwrap_or_else(|e| e.into_inner()));
        let value = found.unwrap_or_else(|| {
            let mut all = self.all.write().unwrap_or_else(|e| e.into_inner());
            find(&all).unwrap_or_else(|| {
                let value = make();
                all.push((site, value));
                value
            })
        });
        memo.set(Some((site, value)));
        value
    }
}

impl<T: Copy + Send + Sync + 'static> Default for PerCallsite<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Send + Sync + 'static> std::fmt::Debug for PerCallsite<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerCallsite").finish_non_exhaustive()
    }
}

/// One `record` call with `values` for `fields` (same order; `None` for undeclared).
fn record<const N: usize>(
    dispatch: &Dispatch,
    id: &Id,
    meta: &'static Metadata<'static>,
    fields: &[Option<Field>],
    values: &[(&'static str, &dyn Value); N],
) {
    // A value set needs a field in every slot: an undeclared name gets a declared
    // field with no value, which visitors never see.
    let Some(any) = fields.iter().flatten().next() else {
        return;
    };
    let pairs: [(&Field, Option<&dyn Value>); N] = std::array::from_fn(|i| match &fields[i] {
        Some(field) => (field, Some(values[i].1)),
        None => (any, None),
    });
    dispatch.record(id, &Record::new(&meta.fields().value_set(&pairs)));
}

/// The fields of one list of names in one span callsite.
struct Found {
    site: usize,
    names: Box<[&'static str]>,
    fields: Box<[Option<Field>]>,
}

impl Found {
    fn is(&self, site: usize, names: &[&'static str]) -> bool {
        self.site == site
            && self.names.len() == names.len()
            && self.names.iter().zip(names).all(|(a, b)| std::ptr::eq(*a, *b))
    }
}

thread_local! {
    /// Lists of fields already looked up, by span callsite and names (all by address):
    /// the request span declares some twenty fields, and finding one by name
    /// compares the names before it.
    static FOUND: RefCell<Vec<Found>> = const { RefCell::new(Vec::new()) };
}

/// At most this many lists are remembered per thread (a few call sites, a few spans).
const MAX_FOUND: usize = 16;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::Subscriber;
    use tracing::field::Visit;
    use tracing::span::Id;
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    use super::*;

    /// Every `record` call the subscriber gets, as the fields it carried.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<String>>>);

    struct Fields(Vec<String>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push(format!("{}={value:?}", field.name()));
        }
    }

    impl<S: Subscriber> Layer<S> for Calls {
        fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
            let mut fields = Fields(Vec::new());
            values.record(&mut fields);
            self.0.lock().unwrap().push(fields.0.join(" "));
        }
    }

    #[test]
    fn one_call_with_the_declared_fields() {
        let calls = Calls::default();
        let subscriber = tracing_subscriber::registry().with(calls.clone());
        tracing::subscriber::with_default(subscriber, || {
            // No current span: nothing to record, no panic.
            record_current([("a", &"x" as &dyn Value)]);
            let span = tracing::info_span!("req", a = tracing::field::Empty, c = tracing::field::Empty);
            span.in_scope(|| {
                record_current([("a", &"x" as &dyn Value), ("undeclared", &1u64), ("c", &7u64)]);
                record_current([("undeclared", &1u64 as &dyn Value)]);
                // Again, with the fields remembered.
                record_current([("c", &8u64 as &dyn Value), ("a", &"y"), ("undeclared", &1u64)]);
            });
            // Another span with the same names: its own fields.
            let other = tracing::info_span!("other", c = tracing::field::Empty);
            other.in_scope(|| record_current([("a", &"z" as &dyn Value), ("c", &9u64)]));
        });
        assert_eq!(*calls.0.lock().unwrap(), ["a=\"x\" c=7", "c=8 a=\"y\"", "c=9"]);
    }
}
