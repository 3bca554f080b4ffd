//! Recording request-span fields with one call to the subscriber.

use tracing::field::{Field, Value};
use tracing::span::Record;

/// Records `values` (field name, value) in the current span, as `Span::current()`
/// followed by one `Span::record` per value would, with one call to the subscriber
/// and no span handle: `Span::current()` takes a reference on the span in the
/// registry and dropping the handle releases it, and every `record` is a lookup of
/// its own. Names the span does not declare are skipped, as `Span::record` skips them.
pub(crate) fn record_current<const N: usize>(values: [(&str, &dyn Value); N]) {
    tracing::dispatcher::get_default(|dispatch| {
        let Some((id, meta)) = dispatch.current_span().into_inner() else {
            return;
        };
        let names = meta.fields();
        let found: [Option<Field>; N] = values.map(|(name, _)| names.field(name));
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
        dispatch.record(&id, &Record::new(&names.value_set(&pairs)));
    });
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
            });
        });
        assert_eq!(*calls.0.lock().unwrap(), ["a=\"x\" c=7"]);
    }
}
