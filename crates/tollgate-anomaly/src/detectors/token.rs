//! Token sharing: the fingerprinting layer's verdict on the session.

use tollgate_core::{SessionHealth, SessionInfo};

use crate::config::TokenSharingConfig;

/// Reads [`SessionInfo`] (from the fingerprinting layer) and tags sessions at or
/// below the configured health: 50 for `suspicious`, 90 for `unhealthy`. Keeps no state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenSharingDetector {
    min: SessionHealth,
}

impl TokenSharingDetector {
    /// A detector with this configuration.
    pub(crate) fn new(config: &TokenSharingConfig) -> Self {
        TokenSharingDetector {
            min: config.min_health.as_health(),
        }
    }

    /// The score of a session verdict.
    pub(crate) fn score_health(&self, health: SessionHealth) -> Option<u8> {
        if health < self.min {
            return None;
        }
        match health {
            SessionHealth::Healthy => None,
            SessionHealth::Suspicious => Some(50),
            SessionHealth::Unhealthy => Some(90),
        }
    }

    /// The score of a session.
    pub(crate) fn score(&self, session: &SessionInfo) -> Option<u8> {
        self.score_health(session.health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_sessions_score_by_default() {
        let d = TokenSharingDetector::new(&TokenSharingConfig::default());
        assert_eq!(d.score_health(SessionHealth::Unhealthy), Some(90));
        assert_eq!(d.score_health(SessionHealth::Suspicious), None);
        assert_eq!(d.score_health(SessionHealth::Healthy), None);
        let d = TokenSharingDetector::new(&TokenSharingConfig {
            min_health: crate::config::HealthLevel::Suspicious,
            ..TokenSharingConfig::default()
        });
        assert_eq!(d.score_health(SessionHealth::Suspicious), Some(50));
    }
}
