//! The data inventory: every field the stack logs or stores, why, and for how long.
//!
//! Layers declare their fields as [`FieldSpec`]s; the stack collects them into a
//! [`DataInventory`] that can be printed as JSON or Markdown, and tests check that
//! every emitted field is declared.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// How a field protects the person it is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    /// A keyed pseudonym that rotates with the key epoch.
    Pseudonym,
    /// A stable keyed digest, used only as a store key.
    KeyedDigest,
    /// A coarsened value (network prefix, user-agent family, minute).
    Coarsened,
    /// Not about a person: a route template, a status, a count.
    NotPersonal,
}

/// Where a field goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sink {
    /// A field of the request span and its log line.
    Span,
    /// A state store (in-process or Redis).
    Store,
    /// A request or response extension, in memory for one request.
    Extension,
    /// A response header sent to the caller.
    ResponseHeader,
}

/// How long a field is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Retention {
    /// Only while the request is served.
    Request,
    /// As long as the operator's log pipeline keeps log lines.
    LogPipeline,
    /// At most this many seconds after its last update.
    Ttl {
        /// The time to live in seconds.
        seconds: u64,
    },
}

impl Retention {
    /// A TTL retention.
    pub fn ttl(d: Duration) -> Self {
        Retention::Ttl { seconds: d.as_secs() }
    }
}

/// One declared field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldSpec {
    /// The field's name as emitted (span field, store namespace, header).
    pub name: &'static str,
    /// The layer that writes it.
    pub layer: &'static str,
    /// What it is derived from.
    pub derived_from: &'static str,
    /// How it protects the person it is about.
    pub protection: Protection,
    /// Why the stack needs it.
    pub purpose: &'static str,
    /// How long it is kept.
    pub retention: Retention,
    /// Where it goes.
    pub sinks: &'static [Sink],
}

/// The collected inventory of a stack.
///
/// ```
/// use tollgate_core::inventory::{DataInventory, FieldSpec, Protection, Retention, Sink};
///
/// let mut inventory = DataInventory::default();
/// inventory.extend([FieldSpec {
///     name: "http.route",
///     layer: "privacy",
///     derived_from: "the matched route template",
///     protection: Protection::NotPersonal,
///     purpose: "which endpoint was called",
///     retention: Retention::LogPipeline,
///     sinks: &[Sink::Span],
/// }]);
/// assert!(inventory.get("http.route").is_some());
/// assert!(inventory.to_markdown().contains("| http.route |"));
/// ```
#[derive(Clone, Debug, Default, Serialize)]
pub struct DataInventory {
    fields: Vec<FieldSpec>,
}

impl DataInventory {
    /// Adds fields; a field already declared by the same layer is replaced.
    pub fn extend(&mut self, fields: impl IntoIterator<Item = FieldSpec>) {
        for field in fields {
            self.fields
                .retain(|f| !(f.name == field.name && f.layer == field.layer));
            self.fields.push(field);
        }
    }

    /// The declared fields, in declaration order.
    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }

    /// The first field with this name.
    pub fn get(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The inventory as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.fields).expect("inventory serializes")
    }

    /// The inventory as a Markdown table.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from(
            "| field | layer | derived from | protection | purpose | retention | sinks |\n|---|---|---|---|---|---|---|\n",
        );
        for f in &self.fields {
            let retention = match f.retention {
                Retention::Request => "the request".to_string(),
                Retention::LogPipeline => "the log pipeline's retention".to_string(),
                Retention::Ttl { seconds } => format!("{seconds} s after last update"),
            };
            let sinks: Vec<String> = f.sinks.iter().map(|s| format!("{s:?}").to_lowercase()).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:?} | {} | {} | {} |",
                f.name,
                f.layer,
                f.derived_from,
                f.protection,
                f.purpose,
                retention,
                sinks.join(", ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &'static str, purpose: &'static str) -> FieldSpec {
        FieldSpec {
            name,
            layer: "test",
            derived_from: "nothing",
            protection: Protection::NotPersonal,
            purpose,
            retention: Retention::ttl(Duration::from_secs(60)),
            sinks: &[Sink::Store],
        }
    }

    #[test]
    fn later_declarations_replace_earlier_ones() {
        let mut inv = DataInventory::default();
        inv.extend([field("a", "first"), field("b", "b")]);
        inv.extend([field("a", "second")]);
        assert_eq!(inv.fields().len(), 2);
        assert_eq!(inv.get("a").unwrap().purpose, "second");
    }

    #[test]
    fn json_names_retention() {
        let mut inv = DataInventory::default();
        inv.extend([field("a", "p")]);
        let v: serde_json::Value = serde_json::from_str(&inv.to_json()).unwrap();
        assert_eq!(v[0]["retention"]["seconds"], 60);
        assert_eq!(v[0]["sinks"][0], "store");
    }
}

/// How many entries one piece of kept state holds now, for memory checks, the admin
/// API and the public inventory (`/.well-known/tollgate/inventory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StateSize {
    /// The state's name, as in the data inventory.
    pub name: &'static str,
    /// Entries held now.
    pub len: usize,
    /// The most entries it can hold.
    pub capacity: usize,
}
