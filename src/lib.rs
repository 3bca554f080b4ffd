//! # tollgate
//!
//! Tower layers for axum that secure and manage API sessions without turning the
//! API into a surveillance system. Each layer works alone; [`Tollgate`] composes
//! them from one configuration in the right order.
//!
//! | layer | adds | can answer early |
//! |---|---|---|
//! | [`privacy::PrivacyTraceLayer`] (outermost) | the request span, `ClientContext` | never |
//!
//! ```
//! use axum::{Router, routing::get};
//! use tollgate::{Tollgate, TollgateConfig};
//!
//! let tollgate = Tollgate::from_config(&TollgateConfig::default()).unwrap();
//! let app: Router = tollgate.apply(Router::new().route("/health", get(|| async { "ok" })));
//! println!("{}", tollgate.inventory().to_markdown());
//! ```
#![warn(missing_docs)]

mod config;

use axum::Router;
pub use config::{PseudonymConfig, TollgateConfig};
pub use tollgate_core as core;
use tollgate_core::{DataInventory, PseudonymSecret, Pseudonymizer};
#[cfg(feature = "privacy")]
pub use tollgate_privacy as privacy;

/// Why the stack could not be built. Each message names the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        cause: String,
    },
    /// The config file is not valid.
    #[error("invalid config file {path}: {cause}")]
    Parse {
        /// The file.
        path: String,
        /// The parse error, with the offending key.
        cause: String,
    },
    /// The pseudonym secret is unusable.
    #[error("pseudonym.secret / TOLLGATE_PSEUDONYM_SECRET: {0}")]
    Secret(#[from] tollgate_core::pseudonym::SecretError),
    /// The privacy layer's section is invalid.
    #[cfg(feature = "privacy")]
    #[error(transparent)]
    Privacy(#[from] tollgate_privacy::PrivacyConfigError),
}

/// The composed stack. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tollgate {
    pseudonymizer: Pseudonymizer,
    #[cfg(feature = "privacy")]
    privacy: tollgate_privacy::PrivacyTraceLayer,
}

impl Tollgate {
    /// Builds the stack from its configuration.
    pub fn from_config(config: &TollgateConfig) -> Result<Self, BuildError> {
        let pseudonymizer = pseudonymizer(&config.pseudonym)?;
        Ok(Tollgate {
            #[cfg(feature = "privacy")]
            privacy: tollgate_privacy::PrivacyTraceLayer::from_config(
                &config.privacy,
                pseudonymizer.clone(),
            )?,
            pseudonymizer,
        })
    }

    /// The pseudonymizer every layer shares.
    pub fn pseudonymizer(&self) -> &Pseudonymizer {
        &self.pseudonymizer
    }

    /// Wraps `router` in the stack, outermost layer last.
    pub fn apply<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        #[cfg(feature = "privacy")]
        let router = router.layer(self.privacy.clone());
        router
    }

    /// Every field the stack logs or stores: name, source, purpose, retention.
    pub fn inventory(&self) -> DataInventory {
        let mut inventory = DataInventory::default();
        #[cfg(feature = "privacy")]
        inventory.extend(self.privacy.inventory());
        inventory
    }
}

/// The pseudonymizer from the environment variable, else the config, else a random
/// secret (with a warning).
fn pseudonymizer(config: &PseudonymConfig) -> Result<Pseudonymizer, BuildError> {
    let secret = match PseudonymSecret::from_env()? {
        Some(secret) => Some(secret),
        None => config
            .secret
            .as_deref()
            .map(PseudonymSecret::from_hex)
            .transpose()?,
    };
    Ok(match secret {
        Some(secret) => Pseudonymizer::new(secret, config.epoch()),
        None => Pseudonymizer::ephemeral(config.epoch())?,
    })
}
