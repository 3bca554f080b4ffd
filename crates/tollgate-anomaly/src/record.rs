//! The text of a verdict: the `anomaly` span field and the debug header.

use std::fmt;
use std::sync::OnceLock;

use tollgate_core::fields;
use tollgate_core::span::record_current;
use tracing::Value;

use crate::config::Action;
use crate::tags::{AnomalyKind, AnomalyTags};

/// What the `anomaly` span field and the debug header show: `kind:score` pairs,
/// then `;action=...` when an action was taken (or would be, in report-only mode).
#[derive(Clone, Copy)]
pub(crate) struct Record {
    pub(crate) tags: AnomalyTags,
    pub(crate) action: Option<&'static str>,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render().as_str())
    }
}

/// The text of a [`Record`], built without the formatting machinery: at most five
/// `kind:score` pairs and an action name fit in 128 bytes.
pub(crate) struct RecordText {
    buf: [u8; 128],
    len: usize,
}

impl RecordText {
    fn push(&mut self, s: &str) {
        let end = (self.len + s.len()).min(self.buf.len());
        self.buf[self.len..end].copy_from_slice(&s.as_bytes()[..end - self.len]);
        self.len = end;
    }

    fn push_score(&mut self, score: u8) {
        let digits = [b'0' + score / 100, b'0' + score / 10 % 10, b'0' + score % 10];
        let skip = if score >= 100 {
            0
        } else if score >= 10 {
            1
        } else {
            2
        };
        for &d in &digits[skip..] {
            if self.len < self.buf.len() {
                self.buf[self.len] = d;
                self.len += 1;
            }
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII kind and action names and digits are pushed, whole.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl Record {
    /// The record of a request refused under a penalty.
    pub(crate) fn refusal(tags: AnomalyTags, action: Action) -> Record {
        Record {
            tags,
            action: Some(action.as_str()),
        }
    }

    /// The text, as [`AnomalyTags`]'s `Display` then `;action=...`.
    pub(crate) fn render(&self) -> RecordText {
        let mut out = RecordText {
            buf: [0; 128],
            len: 0,
        };
        for (i, (kind, score)) in self.tags.iter().enumerate() {
            if i > 0 {
                out.push(",");
            }
            out.push(kind.as_str());
            out.push(":");
            out.push_score(score);
        }
        if let Some(action) = self.action {
            out.push(";action=");
            out.push(action);
        }
        out
    }

    pub(crate) fn emit(&self) {
        // As a string: the JSON log writes it as `display` did, without running the
        // formatting machinery.
        if self.action.is_none()
            && self.tags.len() == 1
            && let Some((kind, score)) = self.tags.iter().next()
        {
            record_current([(fields::ANOMALY, &single_tag_text(kind, score) as &dyn Value)]);
        } else if !self.tags.is_empty() || self.action.is_some() {
            let text = self.render();
            record_current([(fields::ANOMALY, &text.as_str() as &dyn Value)]);
        }
    }
}

/// `kind:score` for every kind and score, made once: the text of a request with one
/// tag and no action, the common case, is a lookup.
fn single_tag_text(kind: AnomalyKind, score: u8) -> &'static str {
    static TEXT: OnceLock<Vec<String>> = OnceLock::new();
    let table = TEXT.get_or_init(|| {
        AnomalyKind::ALL
            .iter()
            .flat_map(|k| (0..=100u8).map(move |s| format!("{}:{s}", k.as_str())))
            .collect()
    });
    &table[kind.index() * 101 + usize::from(score.min(100))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Action;

    #[test]
    fn record_text_matches_display() {
        let mut tags = AnomalyTags::default();
        let check = |record: Record| {
            let expected = match record.action {
                Some(a) => format!("{};action={a}", record.tags),
                None => record.tags.to_string(),
            };
            assert_eq!(record.render().as_str(), expected);
            assert_eq!(record.to_string(), expected);
        };
        check(Record { tags, action: None });
        check(Record {
            tags,
            action: Some("block"),
        });
        for kind in AnomalyKind::ALL {
            for score in 1..=100 {
                let mut one = AnomalyTags::default();
                one.insert(kind, score);
                assert_eq!(single_tag_text(kind, score), one.to_string());
            }
        }
        for (kind, score) in AnomalyKind::ALL.into_iter().zip([1u8, 9, 10, 99, 100]) {
            tags.insert(kind, score);
            check(Record { tags, action: None });
            check(Record {
                tags,
                action: Some(Action::Throttle.would()),
            });
        }
    }
}
