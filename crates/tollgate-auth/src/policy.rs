//! How a principal's tier is found.

use std::collections::HashMap;

use tollgate_core::{Scopes, Tier};

/// The longest tier name accepted from a token.
const MAX_TIER_LEN: usize = 64;

/// Where tiers come from: a claim, a scope prefix, or the default.
#[derive(Clone, Debug)]
pub(crate) struct TierPolicy {
    pub(crate) default: Tier,
    pub(crate) claim: Option<String>,
    pub(crate) scope_prefix: Option<String>,
    pub(crate) allowed: Option<HashMap<String, Tier>>,
}

impl Default for TierPolicy {
    fn default() -> Self {
        TierPolicy {
            default: Tier::new(tollgate_core::principal::DEFAULT_TIER),
            claim: None,
            scope_prefix: None,
            allowed: None,
        }
    }
}

impl TierPolicy {
    /// The tier of callers for whom no tier was found.
    pub(crate) fn default_tier(mut self, tier: &str) -> Self {
        self.default = Tier::new(tier);
        self
    }

    /// Reads the tier from this token claim (JWT claim or introspection field).
    pub(crate) fn claim(mut self, name: &str) -> Self {
        self.claim = Some(name.to_string());
        self
    }

    /// Reads the tier from a scope with this prefix: with `tier:`, scope `tier:pro`
    /// gives tier `pro`. The claim wins when both are present.
    pub(crate) fn scope_prefix(mut self, prefix: &str) -> Self {
        self.scope_prefix = Some(prefix.to_string());
        self
    }

    /// Accepts only these tier names from tokens; any other gives the default tier.
    /// Without a list, any short name of letters, digits, `-`, `_`, `.` is accepted.
    pub(crate) fn allowed<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, tiers: I) -> Self {
        self.allowed = Some(
            tiers
                .into_iter()
                .map(|t| (t.as_ref().to_string(), Tier::new(t.as_ref())))
                .collect(),
        );
        self
    }

    /// The tier for a token with this claim value and these scopes.
    pub(crate) fn resolve(&self, claim_value: Option<&str>, scopes: &Scopes) -> Tier {
        let from_scope = || {
            let prefix = self.scope_prefix.as_deref()?;
            scopes.iter().find_map(|s| s.strip_prefix(prefix))
        };
        match claim_value.or_else(from_scope) {
            Some(name) => self.named(name),
            None => self.default.clone(),
        }
    }

    /// A configured tier name (from an API key record) or the default.
    pub(crate) fn named(&self, name: &str) -> Tier {
        match &self.allowed {
            Some(allowed) => allowed.get(name).cloned().unwrap_or_else(|| self.default.clone()),
            None if is_tier_name(name) => Tier::new(name),
            None => self.default.clone(),
        }
    }
}

fn is_tier_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TIER_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_then_scope_then_default() {
        let p = TierPolicy::default().claim("plan").scope_prefix("tier:");
        let scopes = Scopes::from_space_separated("read tier:pro");
        assert_eq!(p.resolve(Some("gold"), &scopes).as_str(), "gold");
        assert_eq!(p.resolve(None, &scopes).as_str(), "pro");
        assert_eq!(p.resolve(None, &Scopes::default()).as_str(), "default");
        assert_eq!(p.resolve(Some("no spaces allowed"), &scopes).as_str(), "default");
        let p = p.allowed(["free", "pro"]);
        assert_eq!(p.resolve(Some("gold"), &scopes).as_str(), "default");
        assert_eq!(p.resolve(Some("pro"), &scopes).as_str(), "pro");
    }
}
