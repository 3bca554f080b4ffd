//! Token sharing: the fingerprinting layer's verdict on the session.

use tollgate_core::{SessionHealth, SessionInfo};

use crate::config::TokenSharingConfig;

/// Reads [`SessionInfo`] (from the fingerprinting layer) and tags sessions at or
/// below the configured health: 50 for `suspicious`, 90 for `unhealthy`. Keeps no state.
///
/// ```
/// use tollgate_anomaly::TokenSharingConfig;
/// use tollgate_anomaly::detectors::TokenSharingDetector;
/// use tollgate_core::SessionHealth;
///
/// let d = TokenSharingDetector::new(&TokenSharingConfig::default());
/// assert_eq!(d.score_health(SessionHealth::Unhealthy), Some(90));
/// assert_eq!(d.score_health(SessionHealth::Suspicious), None);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokenSharingDetector {
    min: SessionHealth,
}

impl TokenSharingDetector {
    /// A detector with this configuration.
    pub fn new(config: &TokenSharingConfig) -> Self {
        TokenSharingDetector {
            min: config.min_health.as_health(),
        }
    }

    /// The score of a session verdict.
    pub fn score_health(&self, health: SessionHealth) -> Option<u8> {
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
    pub fn score(&self, session: &SessionInfo) -> Option<u8> {
        self.score_health(session.health)
    }
}
