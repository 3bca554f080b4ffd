//! The request log writer: one JSON line per event, with the enclosing request
//! span's fields, timestamps to the minute.
//!
//! tracing-subscriber's own JSON formatter re-parses and re-serializes a span's
//! fields on every `record`, which costs more than the rest of the stack together.
//! [`JsonLogLayer`] keeps the request span's fields as typed slots instead and
//! writes the line once, when the event fires. Its output has the shape of
//! tracing-subscriber's JSON format (`timestamp`, `level`, `fields`, `target`,
//! `span`), so log pipelines that read one read the other.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::Arc;

use tollgate_core::span::PerCallsite;
use tracing::field::{Field, FieldSet, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use tollgate_core::{Clock, SystemClock};

use crate::TARGET;

/// A tracing-subscriber layer that writes every event as one JSON line, with the
/// fields of its enclosing tollgate request span under `span` and the time to the
/// minute (exact times are a linking dimension that request logs rarely need;
/// latency is logged separately).
///
/// Pair it with a non-blocking writer (such as `tracing_appender::non_blocking`) so a
/// request never waits on a write to stdout.
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// let subscriber = tracing_subscriber::registry()
///     .with(tollgate_privacy::JsonLogLayer::new(std::io::stdout))
///     .with(tracing_subscriber::filter::LevelFilter::INFO);
/// # let _ = subscriber;
/// ```
pub struct JsonLogLayer<W> {
    make_writer: W,
    observers: Vec<Arc<dyn RequestObserver>>,
}

impl<W: fmt::Debug> fmt::Debug for JsonLogLayer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLogLayer")
            .field("make_writer", &self.make_writer)
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl<W> JsonLogLayer<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    /// A layer writing lines to `make_writer`.
    pub fn new(make_writer: W) -> Self {
        JsonLogLayer {
            make_writer,
            observers: Vec::new(),
        }
    }

    /// Also hands every finished request's record to `observer` (metrics, the
    /// operator console): everything derived from requests reads the one record the
    /// log line is written from, so it can hold nothing the log does not.
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Writes `event` as one line, with the request span's `fields` if it has one.
    fn write_line(&self, event: &Event<'_>, fields: Option<&RequestFields>) {
        let metadata = event.metadata();
        LINE.with_borrow_mut(|line| {
            line.clear();
            line.extend_from_slice(br#"{"timestamp":""#);
            write_minute(line);
            line.extend_from_slice(br#"","level":""#);
            line.extend_from_slice(level_str(metadata.level()).as_bytes());
            line.extend_from_slice(br#"","fields":{"#);
            event.record(&mut EventFields {
                out: line,
                first: true,
            });
            line.extend_from_slice(br#"},"target":""#);
            let _ = JsonEscaper(line).write_str(metadata.target());
            line.push(b'"');
            if let Some(fields) = fields {
                line.extend_from_slice(br#","span":"#);
                fields.write_json(line);
            }
            line.extend_from_slice(b"}\n");
            let _ = self.make_writer.make_writer_for(metadata).write_all(line);
        });
    }
}

/// Receives the record of every finished request (see [`JsonLogLayer::with_observer`]).
pub trait RequestObserver: Send + Sync + 'static {
    /// Called once per request, right after its completion line is written (the
    /// event naming the request span as its explicit `parent`, which the privacy
    /// layer emits when the response is ready), on that thread: keep it short
    /// (counters, not I/O). A request dropped before its response has no completion
    /// line and no record.
    fn observe(&self, record: &RequestRecord<'_>);
}

/// The fields of one finished request span, as its log line has them.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tollgate_privacy::{RecordedValue, RequestObserver, RequestRecord, TARGET};
/// use tracing_subscriber::prelude::*;
///
/// #[derive(Default)]
/// struct Statuses(Mutex<Vec<u64>>);
/// impl RequestObserver for Statuses {
///     fn observe(&self, record: &RequestRecord<'_>) {
///         if let Some(RecordedValue::U64(status)) = record.get("http.status") {
///             self.0.lock().unwrap().push(status);
///         }
///     }
/// }
///
/// let statuses = Arc::new(Statuses::default());
/// let layer = tollgate_privacy::json_layer(std::io::sink).with_observer(statuses.clone());
/// tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
///     let span = tracing::info_span!(target: TARGET, "request", http.status = 429u64);
///     tracing::info!(target: TARGET, parent: &span, "request completed");
/// });
/// assert_eq!(*statuses.0.lock().unwrap(), [429]);
/// ```
pub struct RequestRecord<'a>(&'a RequestFields);

/// One recorded field of a [`RequestRecord`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RecordedValue<'a> {
    /// Text, as written in the log line: UTF-8, JSON-escaped. Bytes, so that an
    /// observer comparing against known values pays no UTF-8 check.
    Text(&'a [u8]),
    /// An unsigned number.
    U64(u64),
    /// A signed number.
    I64(i64),
    /// A float.
    F64(f64),
    /// A flag.
    Bool(bool),
}

impl<'a> RequestRecord<'a> {
    /// The fields the request span's callsite declares: the same `FieldSet` (same
    /// `callsite()`) for every request of a profile, so an observer can find the
    /// positions of the fields it reads once and then use [`value_at`](Self::value_at).
    pub fn field_set(&self) -> &'static tracing::field::FieldSet {
        self.0.names
    }

    /// The field at `position` in [`field_set`](Self::field_set), if recorded.
    #[inline]
    pub fn value_at(&self, position: usize) -> Option<RecordedValue<'a>> {
        let fields = self.0;
        Some(match *fields.slots.get(position)? {
            Slot::Empty => return None,
            Slot::U64(v) => RecordedValue::U64(v),
            Slot::I64(v) => RecordedValue::I64(v),
            Slot::F64(v) => RecordedValue::F64(v),
            Slot::Bool(v) => RecordedValue::Bool(v),
            Slot::Str(a, b) => RecordedValue::Text(&fields.text[a as usize..b as usize]),
        })
    }

    /// The field named `name`, if declared and recorded (a scan of the field set;
    /// an observer reading many fields on every request resolves positions once
    /// with [`field_set`](Self::field_set) and reads them with
    /// [`value_at`](Self::value_at)).
    pub fn get(&self, name: &str) -> Option<RecordedValue<'a>> {
        self.value_at(self.0.names.field(name)?.index())
    }
}

/// Shorthand for [`JsonLogLayer::new`].
pub fn json_layer<W>(make_writer: W) -> JsonLogLayer<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    JsonLogLayer::new(make_writer)
}

/// Targets whose events carry raw client input in their text: axum's server logs
/// `connection 203.0.113.7:50122 accepted`, and its extractors log the rejected
/// input itself (`Cannot parse `alice@example.com` to a `u64``), both at TRACE.
/// Free text cannot be scrubbed, so [`JsonLogLayer`] never writes these events.
pub const RAW_INPUT_TARGETS: &[&str] = &["axum::serve", "axum::rejection"];

/// Most fields a request span may declare.
const MAX_FIELDS: usize = 24;

#[derive(Clone, Copy)]
enum Slot {
    Empty,
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    /// Escaped JSON string content, as a range of `RequestFields::text`.
    Str(u32, u32),
}

/// A request span's recorded fields, kept in the span's extensions.
struct RequestFields {
    names: &'static FieldSet,
    slots: [Slot; MAX_FIELDS],
    text: Vec<u8>,
}

impl RequestFields {
    fn set(&mut self, field: &Field, slot: Slot) {
        if let Some(s) = self.slots.get_mut(field.index()) {
            *s = slot;
        }
    }

    fn set_str(&mut self, field: &Field, write: impl FnOnce(&mut JsonEscaper<'_>) -> fmt::Result) {
        let start = self.text.len();
        let _ = write(&mut JsonEscaper(&mut self.text));
        let slot = Slot::Str(start as u32, self.text.len() as u32);
        self.set(field, slot);
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (field, key) in self.names.iter().zip(rendered_keys(self.names)) {
            let slot = self.slots.get(field.index()).copied().unwrap_or(Slot::Empty);
            if matches!(slot, Slot::Empty) {
                continue;
            }
            out.extend_from_slice(key);
            match slot {
                Slot::Empty => {}
                Slot::U64(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
                Slot::I64(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
                Slot::F64(v) => write_f64(out, v),
                Slot::Bool(v) => out.extend_from_slice(if v { b"true" } else { b"false" }),
                Slot::Str(a, b) => {
                    out.push(b'"');
                    out.extend_from_slice(&self.text[a as usize..b as usize]);
                    out.push(b'"');
                }
            }
            out.push(b',');
        }
        out.extend_from_slice(br#""name":"request"}"#);
    }
}

impl Visit for RequestFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, Slot::U64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Slot::I64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Slot::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Slot::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set_str(field, |w| w.write_str(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set_str(field, |w| write!(w, "{value:?}"));
    }
}

/// Writes an event's own fields as a JSON object body.
struct EventFields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl EventFields<'_> {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_key(self.out, field.name());
    }
}

impl Visit for EventFields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        write_f64(self.out, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.out.push(b'"');
        let _ = JsonEscaper(self.out).write_str(value);
        self.out.push(b'"');
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.out.push(b'"');
        let _ = write!(JsonEscaper(self.out), "{value:?}");
        self.out.push(b'"');
    }
}

/// The `"name":` of every field of a request span's callsite, escaped once: the
/// keys were a third of the escaper's calls on every line. Made once per callsite
/// (there are a handful, for the program's life) and kept as long.
fn rendered_keys(names: &'static FieldSet) -> &'static [Box<[u8]>] {
    static KEYS: PerCallsite<&'static [Box<[u8]>]> = PerCallsite::new();
    KEYS.get_or_insert_with(names, || {
        Box::leak(
            names
                .iter()
                .map(|f| {
                    let mut key = Vec::new();
                    write_key(&mut key, f.name());
                    key.into_boxed_slice()
                })
                .collect(),
        )
    })
}

/// `"name":`
fn write_key(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    let _ = JsonEscaper(out).write_str(name);
    out.extend_from_slice(b"\":");
}

fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Writes text into a buffer as the content of a JSON string.
struct JsonEscaper<'a>(&'a mut Vec<u8>);

/// True if `bytes` holds a `"`, a `\` or a control byte, eight bytes per step (the
/// escaper's scan was its largest cost: about 4,900 of the stack's instructions per
/// request, with some 30 keys and values a line).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Bytes of `w` below `n` (n <= 0x80) get their high bit set; exact as an "any" test.
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    let equal = |w: u64, b: u8| below(w ^ (ONES * u64::from(b)), 1);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        if below(w, 0x20) | equal(w, b'"') | equal(w, b'\\') != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

impl fmt::Write for JsonEscaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        // Most values (pseudonyms, routes, ids) need no escaping: copy them whole.
        if !needs_escape(bytes) {
            self.0.extend_from_slice(bytes);
            return Ok(());
        }
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => b"",
                _ => continue,
            };
            self.0.extend_from_slice(&bytes[start..i]);
            if escape.is_empty() {
                let _ = write!(self.0, "\\u{:04x}", b);
            } else {
                self.0.extend_from_slice(escape);
            }
            start = i + 1;
        }
        self.0.extend_from_slice(&bytes[start..]);
        Ok(())
    }
}

fn level_str(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERROR",
    }
}

thread_local! {
    /// The line being written, reused across events on this thread.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// The last minute formatted on this thread and its text.
    static MINUTE: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
}

/// `2026-11-25T14:07:00Z` for the current minute, cached per thread.
fn write_minute(out: &mut Vec<u8>) {
    let minutes = SystemClock.now().as_secs() / 60;
    MINUTE.with_borrow_mut(|(cached, text)| {
        if *cached != minutes {
            let (y, m, d) = civil_from_days((minutes / 1440) as i64);
            let (hh, mm) = ((minutes % 1440) / 60, minutes % 60);
            let mut buf = Vec::with_capacity(20);
            let _ = write!(buf, "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:00Z");
            if buf.len() == 20 {
                text.copy_from_slice(&buf);
                *cached = minutes;
            } else {
                // Years past 9999: write uncached.
                out.extend_from_slice(&buf);
                return;
            }
        }
        out.extend_from_slice(&text[..]);
    });
}

/// Days since 1970-01-01 to a (year, month, day) date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl<S, W> Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let metadata = attrs.metadata();
        if metadata.target() != TARGET {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = RequestFields {
            names: metadata.fields(),
            slots: [Slot::Empty; MAX_FIELDS],
            text: Vec::with_capacity(160),
        };
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(fields) = span.extensions_mut().get_mut::<RequestFields>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let metadata = event.metadata();
        if RAW_INPUT_TARGETS.iter().any(|t| metadata.target().starts_with(t)) {
            return;
        }
        for span in ctx.event_scope(event).into_iter().flatten() {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<RequestFields>() else {
                continue;
            };
            self.write_line(event, Some(fields));
            // The event naming the request span as its parent completes the request.
            if !self.observers.is_empty() && event.parent() == Some(&span.id()) {
                let record = RequestRecord(fields);
                for observer in &self.observers {
                    observer.observe(&record);
                }
            }
            return;
        }
        self.write_line(event, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_escape_matches_a_byte_by_byte_scan() {
        let naive = |b: &[u8]| b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
        // Every byte value at every position of strings up to 17 bytes long, in an
        // otherwise harmless string (and in one that is all 0xff, to catch borrows).
        for len in 1..=17 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    for fill in [b'a', 0xff, 0x20, 0x7f] {
                        let mut text = vec![fill; len];
                        text[at] = byte;
                        assert_eq!(needs_escape(&text), naive(&text), "{text:?}");
                    }
                }
            }
        }
        assert!(!needs_escape(b""));
    }
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::prelude::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_517), (2026, 3, 5));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(json_layer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).expect(l)).collect()
    }

    #[test]
    fn request_span_fields_and_escaping() {
        let lines = capture(|| {
            let span = tracing::info_span!(target: TARGET, "request", a = "q\"uo\\te\n", b = tracing::field::Empty, c = tracing::field::Empty);
            span.record("b", 7u64);
            span.record("b", 8u64);
            span.record("c", tracing::field::display("shown"));
            let _e = span.enter();
            tracing::info!(n = -3i64, ok = true, "done \u{1}");
        });
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(l["span"]["a"], "q\"uo\\te\n");
        assert_eq!(l["span"]["b"], 8);
        assert_eq!(l["span"]["c"], "shown");
        assert_eq!(l["span"]["name"], "request");
        assert_eq!(l["fields"]["message"], "done \u{1}");
        assert_eq!(l["fields"]["n"], -3);
        assert_eq!(l["fields"]["ok"], true);
        assert_eq!(l["level"], "INFO");
        assert!(l["timestamp"].as_str().unwrap().ends_with(":00Z"));
    }

    #[test]
    fn observers_see_each_request_once_at_its_completion_line() {
        #[derive(Default)]
        struct Seen(Mutex<Vec<Option<u64>>>);
        impl RequestObserver for Seen {
            fn observe(&self, record: &RequestRecord<'_>) {
                let status = match record.get("http.status") {
                    Some(RecordedValue::U64(s)) => Some(s),
                    _ => None,
                };
                self.0.lock().unwrap().push(status);
            }
        }
        let seen = Arc::new(Seen::default());
        let layer = json_layer(std::io::sink).with_observer(seen.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let span = tracing::info_span!(target: TARGET, "request", http.status = tracing::field::Empty);
            span.in_scope(|| tracing::info!("a handler's own line"));
            span.record("http.status", 204u64);
            tracing::info!(target: TARGET, parent: &span, "request completed");
            drop(span);
            // A request dropped before its response: no completion line, no record.
            let dropped = tracing::info_span!(target: TARGET, "request", http.status = 500u64);
            drop(dropped);
            let other = tracing::info_span!("other");
            tracing::info!(parent: &other, "not a request");
        });
        assert_eq!(*seen.0.lock().unwrap(), [Some(204)]);
    }

    #[test]
    fn raw_input_targets_are_never_written() {
        let lines = capture(|| {
            tracing::trace!(target: "axum::serve", "connection 203.0.113.7:50122 accepted");
            tracing::trace!(
                target: "axum::rejection",
                body = "Cannot parse `alice@example.com` to a `u64`",
                "rejecting request"
            );
            tracing::info!("kept");
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["fields"]["message"], "kept");
    }

    #[test]
    fn other_spans_are_not_kept() {
        let lines = capture(|| {
            let span = tracing::info_span!("other", secret = "x");
            let _e = span.enter();
            tracing::warn!("outside any request");
        });
        assert_eq!(lines.len(), 1);
        assert!(lines[0].get("span").is_none());
        assert_eq!(lines[0]["level"], "WARN");
    }
}
