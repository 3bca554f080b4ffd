//! Recording request-span fields with one call to the subscriber.

use std::cell::RefCell;

use tracing::Metadata;
use tracing::field::{Field, Value};
use tracing::span::Record;

/// Records `values` (field name, value) in the current span, as `Span::current()`
/// followed by one `Span::record` per value would, with one call to the subscriber
/// and no span handle: `Span::current()` takes a reference on the span in the
/// registry and dropping the handle releases it, and every `record` is a lookup of
/// its own. Names the span does not declare are skipped, as `Span::record` skips them.
pub(crate) fn record_current<const N: usize>(values: [(&'static str, &dyn Value); N]) {
    tracing::dispatcher::get_default(|dispatch| {
        let Some((id, meta)) = dispatch.current_span().into_inner() else {
            return;
        };
        let found: [Option<Field>; N] = fields(meta, values.map(|(name, _)| name));
        // A value set needs a field in every slot: an undeclared name gets a declared
        // field with no value, which visitors never see.
        let Some(any) = found.iter().flatten().next() else {
            return;
        };
        let mut i = 0;
        let pairs: [(&Field, Option<&dyn Value>); N] = found.each_ref().map(|f| {
            let value = values[i].1;
            i += 1;
            match f {
                Some(field) => (field, Some(value)),
                None => (any, None),
            }
        });
        dispatch.record(&id, &Record::new(&meta.fields().value_set(&pairs)));
    });
}

/// The fields of one list of names in one span callsite.
struct Found {
    site: usize,
    names: Box<[&'static str]>,
    fields: Box<[Option<Field>]>,
}

thread_local! {
    /// Lists of fields already looked up, by span callsite and names (all by address):
    /// the request span declares some twenty fields, and finding one by name
    /// compares the names before it.
    static FOUND: RefCell<Vec<Found>> = const { RefCell::new(Vec::new()) };
}

/// At most this many lists are remembered per thread (a few call sites, a few spans).
const MAX_FOUND: usize = 16;

/// The fields named `names` in the span described by `meta`.
fn fields<const N: usize>(meta: &'static Metadata<'static>, names: [&'static str; N]) -> [Option<Field>; N] {
    let site = std::ptr::from_ref(meta) as usize;
    FOUND.with_borrow_mut(|found| {
        let same = |f: &&Found| {
            f.site == site
                && f.names.len() == N
                && f.names.iter().zip(&names).all(|(a, b)| std::ptr::eq(*a, *b))
        };
        if let Some(f) = found.iter().find(same) {
            let mut i = 0;
            return [(); N].map(|()| {
                i += 1;
                f.fields[i - 1].clone()
            });
        }
        let fields = names.map(|name| meta.fields().field(name));
        if found.len() < MAX_FOUND {
            found.push(Found {
                site,
                names: names.into(),
                fields: fields.clone().into(),
            });
        }
        fields
    })
}

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
