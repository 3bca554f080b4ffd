//! The per-route policy: [`AnomalyRoute`], and the form the request path reads.

use serde::{Deserialize, Serialize};

use crate::config::{Action, ActionMap};
use crate::tags::{AnomalyKind, KIND_COUNT};

/// The anomaly layer's policy for one route: skip the layer, turn detectors off,
/// or override actions.
///
/// Give one per route pattern in a [`tollgate_core::RouteMap`] to
/// [`crate::AnomalyBuilder::routes`]; a stack's facade fills that map from its
/// `[routes."<template>"]` tables. TOML keys: `skip = true`,
/// `disabled = ["volume"]`, `actions = { enumeration = "block" }`.
///
/// ```
/// use tollgate_anomaly::{Action, AnomalyKind, AnomalyRoute};
/// use tollgate_core::RouteMap;
///
/// let routes = RouteMap::new(
///     [
///         ("/health", AnomalyRoute::default().skip()),
///         ("/v1/login", AnomalyRoute::default().action(AnomalyKind::CredentialStuffing, Action::Block)),
///         ("/v1/export/*", AnomalyRoute::default().disable(AnomalyKind::Volume)),
///     ],
///     AnomalyRoute::default(),
/// )
/// .unwrap();
/// let export = routes.get_for_path(Some("/v1/export/{id}"), "/v1/export/7");
/// assert!(!export.is_enabled(AnomalyKind::Volume));
/// assert!(export.is_enabled(AnomalyKind::Enumeration));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyRoute {
    /// Skip the anomaly layer entirely on this route (health checks): no detector
    /// runs, no tag, no penalty is checked.
    pub skip: bool,
    /// Detectors that do not run on this route.
    pub disabled: Vec<AnomalyKind>,
    /// Action overrides for this route; a kind not listed takes the global action.
    pub actions: ActionMap,
}

impl AnomalyRoute {
    /// Sets the action for `kind` on this route.
    pub fn action(mut self, kind: AnomalyKind, action: Action) -> Self {
        self.actions = self.actions.set(kind, action);
        self
    }

    /// Turns `kind`'s detector off on this route.
    pub fn disable(mut self, kind: AnomalyKind) -> Self {
        if !self.disabled.contains(&kind) {
            self.disabled.push(kind);
        }
        self
    }

    /// Skips the layer on this route.
    pub fn skip(mut self) -> Self {
        self.skip = true;
        self
    }

    /// True if `kind`'s detector runs on this route.
    pub fn is_enabled(&self, kind: AnomalyKind) -> bool {
        !self.skip && !self.disabled.contains(&kind)
    }

    pub(crate) fn compile(&self) -> CompiledPolicy {
        let mut disabled = 0u8;
        for k in &self.disabled {
            disabled |= 1 << k.index();
        }
        CompiledPolicy {
            actions: self.actions.to_array(),
            disabled,
            skip: self.skip,
        }
    }
}

/// An [`AnomalyRoute`] in the form the request path reads: `Copy`, no allocation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CompiledPolicy {
    pub(crate) actions: [Option<Action>; KIND_COUNT],
    pub(crate) disabled: u8,
    pub(crate) skip: bool,
}

impl CompiledPolicy {
    pub(crate) fn enabled(&self, kind: AnomalyKind) -> bool {
        self.disabled & (1 << kind.index()) == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn route_policy_from_toml() {
        // As a facade's `[routes."<template>"]` table would carry it.
        let routes: BTreeMap<String, AnomalyRoute> = toml::from_str(
            r#"
            ["/v1/login"]
            actions = { credential_stuffing = "block" }
            disabled = ["volume"]
            ["/health"]
            skip = true
            "#,
        )
        .unwrap();
        let r = &routes["/v1/login"];
        assert_eq!(r.actions.credential_stuffing, Some(Action::Block));
        assert!(!r.is_enabled(AnomalyKind::Volume));
        assert!(r.is_enabled(AnomalyKind::Enumeration));
        assert!(routes["/health"].skip);
        assert!(!routes["/health"].is_enabled(AnomalyKind::Enumeration));
        let bad: Result<AnomalyRoute, _> = toml::from_str("skipped = true");
        assert!(bad.unwrap_err().to_string().contains("unknown field"));
    }
}
