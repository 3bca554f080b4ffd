//! A JSON log subscriber that writes the request line as tollgate means it: the
//! span's fields, timestamps to the minute.

use std::fmt;

use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{self as tfmt, MakeWriter};

use tollgate_core::{Clock, SystemClock};

/// Writes log timestamps to the minute (`2026-11-25T14:07:00Z`): exact times are a
/// linking dimension that request logs rarely need (latency is logged separately).
#[derive(Clone, Copy, Debug, Default)]
pub struct MinuteTimer;

impl FormatTime for MinuteTimer {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let minutes = SystemClock.now().as_secs() / 60;
        let (y, m, d) = civil_from_days((minutes / 1440) as i64);
        let (hh, mm) = ((minutes % 1440) / 60, minutes % 60);
        write!(w, "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:00Z")
    }
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

/// A tracing-subscriber JSON layer for request logs: one line per event, the
/// request span's fields under `span`, timestamps to the minute.
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// let subscriber = tracing_subscriber::registry().with(tollgate_privacy::json_layer(std::io::stdout));
/// # let _ = subscriber;
/// ```
pub fn json_layer<S, W>(writer: W) -> tfmt::Layer<S, JsonFields, Format<Json, MinuteTimer>, W>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    tfmt::layer()
        .json()
        .with_timer(MinuteTimer)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_517), (2026, 3, 5));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
