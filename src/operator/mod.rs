//! The operator and consumer surface: an admin API and an HTML console for
//! operators, the consumer's own data and the data inventory under
//! `/.well-known/tollgate/`, and Prometheus metrics. None of it shows an identifier:
//! everything derived from requests comes from the privacy layer's request records
//! (pseudonyms and fixed vocabularies), as the log lines do.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate::operator::{Observers, Operator};
//! use tollgate::{Tollgate, TollgateConfig};
//! use tracing_subscriber::prelude::*;
//!
//! let config = TollgateConfig::from_toml(r#"
//!     [routes."/admin/*"]
//!     auth = "required"
//!     scopes = ["tollgate:admin"]
//!     [routes."/admin/console"]
//!     auth = "optional"
//!     [routes."/admin/console/*"]
//!     auth = "optional"
//!     [routes."/admin/console/session"]
//!     auth = "required"
//!     scopes = ["tollgate:admin"]
//!     [routes."/.well-known/tollgate/my-data"]
//!     auth = "required"
//!     [auth]
//!     [[auth.api_keys]]
//!     id = "ops"
//!     sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//!     scopes = ["tollgate:admin"]
//! "#)?;
//! // The observers are made first: the log layer feeds them.
//! let observers = Observers::new(&config);
//! tracing_subscriber::registry()
//!     .with(observers.attach(tollgate::privacy::json_layer(std::io::stdout)))
//!     .init();
//! let tollgate = Tollgate::from_config(&config).await?;
//! let operator = Operator::new(&config, &tollgate, observers);
//! let app = axum::Router::new()
//!     .nest("/admin", operator.admin_api().merge(operator.console()))
//!     .merge(operator.well_known())
//!     .merge(operator.metrics());
//! let app = tollgate.apply(app);
//! # let _ = app; Ok(()) }
//! ```

mod activity;
mod admin;
mod console;
mod consumer;
mod counts;
mod metrics;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tollgate_anomaly::AnomalyKind;
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};
use tollgate_core::problem::{Problem, types};
use tollgate_core::session::{SessionHealth, SessionReason};
use tollgate_core::span::PerCallsite;
use tollgate_core::{CarryExt, Principal};
use tollgate_privacy::JsonLogLayer;

use activity::{Named, parse};

pub use activity::{Activity, FlaggedSession, MAX_FLAGGED, Summary, TierUsage, WINDOW_MINUTES};
pub use metrics::{MAX_LABEL_VALUES, Metrics};

use crate::{Tollgate, TollgateConfig};

/// The scope the admin API and the console require.
pub const ADMIN_SCOPE: &str = tollgate_auth::DEFAULT_ADMIN_SCOPE;

/// The request observers behind the operator surface: the last hour's [`Activity`]
/// and the [`Metrics`]. Made before the stack, because the log layer that feeds them
/// is set up first ([`Observers::attach`]).
#[derive(Clone, Debug)]
pub struct Observers {
    /// The last hour of outcomes, for the admin API and the console.
    pub activity: Arc<Activity>,
    /// The Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

impl Observers {
    /// Observers for the tiers `config` declares.
    pub fn new(config: &TollgateConfig) -> Self {
        let tiers: Vec<&str> = config
            .ratelimit
            .as_ref()
            .map(|r| r.tiers.keys().map(String::as_str).collect())
            .unwrap_or_default();
        Observers {
            activity: Arc::new(Activity::new(&tiers)),
            metrics: Arc::new(Metrics::new(&tiers)),
        }
    }

    /// `layer`, feeding both observers (the record is read once for both).
    pub fn attach<W>(&self, layer: JsonLogLayer<W>) -> JsonLogLayer<W>
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
    {
        layer.with_observer(Arc::new(self.clone()))
    }
}

impl tollgate_privacy::RequestObserver for Observers {
    fn observe(&self, record: &tollgate_privacy::RequestRecord<'_>) {
        let view = RecordView::of(record, self.activity.tiers());
        self.activity.observe_view(&view);
        self.metrics.observe_view(&view);
    }
}

/// The operator and consumer surface of one stack. Cheap to clone.
#[derive(Clone)]
pub struct Operator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) tollgate: Tollgate,
    pub(crate) observers: Observers,
    pub(crate) tiers: Vec<admin::TierView>,
    pub(crate) console: console::Sessions,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator").finish_non_exhaustive()
    }
}

impl Operator {
    /// The surface of `tollgate` (built from `config`), showing what `observers` saw.
    pub fn new(config: &TollgateConfig, tollgate: &Tollgate, observers: Observers) -> Self {
        Operator {
            inner: Arc::new(Inner {
                tollgate: tollgate.clone(),
                observers,
                tiers: admin::tiers(config),
                console: console::Sessions::new(),
            }),
        }
    }

    /// The admin API (JSON, problem+json errors), to nest under a prefix such as
    /// `/admin` whose route policy requires authentication: every route refuses a
    /// caller without credentials (401) or without [`ADMIN_SCOPE`] (403) itself too.
    ///
    /// | route | answers |
    /// |---|---|
    /// | `GET /freezes`, `POST /freezes`, `DELETE /freezes`, `DELETE /freezes/{kind}/{digest}` | the freeze list (see `tollgate_auth::FreezeAdmin`) |
    /// | `GET /sessions` | verdict and reason counts over the last hour, and the flagged sessions by pseudonym |
    /// | `GET /tiers` | each tier's limits and its requests and refusals over the last hour |
    /// | `GET /anomalies` | anomaly tags by kind over the last hour, and per minute |
    /// | `GET /inventory` | the data inventory, with the entries each store holds now |
    pub fn admin_api(&self) -> Router {
        admin::router(self.clone())
    }

    /// The HTML console (`/console`), to nest beside the admin API: a login page, the
    /// frozen list with freeze and unfreeze forms, sessions by health, anomaly tags
    /// over the last hour as a chart, tiers and usage, and the inventory. See the
    /// module `console` docs for how it authenticates and guards its forms.
    pub fn console(&self) -> Router {
        console::router(self.clone())
    }

    /// `GET /.well-known/tollgate/my-data` (what the stack holds about the caller;
    /// its route policy must require authentication) and
    /// `GET /.well-known/tollgate/inventory` (the data inventory, public).
    pub fn well_known(&self) -> Router {
        consumer::router(self.clone())
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub fn metrics(&self) -> Router {
        let operator = self.clone();
        Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let operator = operator.clone();
                    async move { operator.render_metrics().await }
                }),
            )
            .method_not_allowed_fallback(tollgate_core::problem::method_not_allowed)
    }

    async fn render_metrics(&self) -> Response {
        let metrics = &self.inner.observers.metrics;
        if let Ok(frozen) = self.inner.tollgate.freeze_list().list().await {
            metrics.set_freeze_list_entries(frozen.len());
        }
        #[cfg(feature = "redis")]
        if let Some(stats) = self.inner.tollgate.redis_stats() {
            metrics.set_store_faults(stats.fail_open, stats.fail_closed);
        }
        if let Some(auth) = self.inner.tollgate.auth()
            && auth.jwks_fetch_count() > 0
        {
            metrics.set_jwks_fetches(auth.jwks_fetch_count(), auth.jwks_fetch_failures());
        }
        (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            metrics.render(),
        )
            .into_response()
    }

    pub(crate) fn tollgate(&self) -> &Tollgate {
        &self.inner.tollgate
    }

    pub(crate) fn activity(&self) -> &Activity {
        &self.inner.observers.activity
    }

    /// What the operator surface itself keeps, for the data inventory.
    pub fn inventory(&self) -> Vec<FieldSpec> {
        vec![
            FieldSpec {
                name: "operator.activity",
                layer: "operator",
                derived_from: "the request records: tiers, rate-limit outcomes, session verdicts and reasons, anomaly kinds, counted per minute",
                protection: Protection::NotPersonal,
                purpose: "the console's and the admin API's view of the last hour",
                retention: Retention::ttl(std::time::Duration::from_secs(WINDOW_MINUTES as u64 * 60)),
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "operator.flagged_sessions",
                layer: "operator",
                derived_from: "the session pseudonym, verdict, reasons and anomaly kinds of sessions judged suspicious or unhealthy",
                protection: Protection::Pseudonym,
                purpose: "show operators which sessions to look at, by pseudonym only",
                retention: Retention::ttl(std::time::Duration::from_secs(WINDOW_MINUTES as u64 * 60)),
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "operator.console_sessions",
                layer: "operator",
                derived_from: "a random console session id (SHA-256 kept) and its random form token, made at console login",
                protection: Protection::NotPersonal,
                purpose: "keep an operator signed in to the console and guard its forms",
                retention: Retention::ttl(console::SESSION_TTL),
                sinks: &[Sink::Store],
            },
        ]
    }
}

/// The fields of a request record the observers read, gathered in one pass, as the
/// log line's bytes (compared, not decoded, on the hot path).
#[derive(Default)]
pub(crate) struct RecordView<'a> {
    pub(crate) route: Option<&'a [u8]>,
    pub(crate) status: Option<u64>,
    /// A [`tier_index`].
    pub(crate) tier: usize,
    pub(crate) auth_error: bool,
    pub(crate) session: Option<&'a [u8]>,
    /// An index into [`HEALTHS`].
    pub(crate) health: Option<usize>,
    pub(crate) reasons: Named,
    pub(crate) action: Option<&'a [u8]>,
    pub(crate) policy: Option<&'a [u8]>,
    pub(crate) outcome: Option<&'a [u8]>,
    /// The anomaly field as logged (tags, then `;action=...`).
    pub(crate) anomaly: &'a [u8],
    /// The anomaly kinds tagged.
    pub(crate) kinds: Named,
}

/// The session verdicts, in the order of their indices.
pub(crate) const HEALTHS: [SessionHealth; 3] = [
    SessionHealth::Healthy,
    SessionHealth::Suspicious,
    SessionHealth::Unhealthy,
];

/// The fields a [`RecordView`] reads, in the order of its position table.
const VIEWED: [&str; 11] = [
    tollgate_core::fields::ROUTE,
    tollgate_core::fields::STATUS,
    tollgate_core::fields::TIER,
    tollgate_core::fields::AUTH_ERROR,
    tollgate_core::fields::SESSION,
    tollgate_core::fields::SESSION_HEALTH,
    tollgate_core::fields::SESSION_REASONS,
    tollgate_core::fields::SESSION_ACTION,
    tollgate_core::fields::RATELIMIT_POLICY,
    tollgate_core::fields::RATELIMIT_OUTCOME,
    tollgate_core::fields::ANOMALY,
];

/// Where each [`VIEWED`] field sits in a callsite's field set (`u8::MAX`: absent),
/// found once per callsite: matching names on every request cost more than the rest
/// of an observer (about 250 ns of 300 in the stack bench).
fn positions(set: &'static tracing::field::FieldSet) -> [u8; VIEWED.len()] {
    static POSITIONS: PerCallsite<[u8; VIEWED.len()]> = PerCallsite::new();
    POSITIONS.get_or_insert_with(set, || {
        let mut at = [u8::MAX; VIEWED.len()];
        for (slot, name) in at.iter_mut().zip(VIEWED) {
            if let Some(field) = set.field(name) {
                *slot = u8::try_from(field.index()).unwrap_or(u8::MAX);
            }
        }
        at
    })
}

impl<'a> RecordView<'a> {
    /// The fields of `record` the observers read, parsed once for all of them, for a
    /// stack whose tiers are `tiers`.
    pub(crate) fn of(record: &tollgate_privacy::RequestRecord<'a>, tiers: &[String]) -> Self {
        use tollgate_privacy::RecordedValue::{I64, Text, U64};
        let at = positions(record.field_set());
        let value = |k: usize| record.value_at(usize::from(at[k]));
        let text = |k: usize| match value(k) {
            Some(Text(s)) => Some(s),
            _ => None,
        };
        let anomaly = text(10).unwrap_or_default();
        RecordView {
            route: text(0),
            status: match value(1) {
                Some(U64(n)) => Some(n),
                Some(I64(n)) => u64::try_from(n).ok(),
                _ => None,
            },
            tier: tier_index(tiers, text(2)),
            auth_error: text(3).is_some(),
            session: text(4),
            health: text(5).and_then(|h| HEALTHS.iter().position(|k| k.as_str().as_bytes() == h)),
            reasons: parse(
                text(6).unwrap_or_default(),
                &SessionReason::ALL,
                SessionReason::as_str,
            ),
            action: text(7),
            policy: text(8),
            outcome: text(9),
            anomaly,
            kinds: parse(anomaly, &AnomalyKind::ALL, AnomalyKind::as_str),
        }
    }
}

/// The index of `seen` among the configured `tiers`, then `anonymous` (no tier) and
/// `other` (a tier not configured): label values stay within the configuration.
pub(crate) fn tier_index(tiers: &[String], seen: Option<&[u8]>) -> usize {
    match seen {
        None => tiers.len(),
        Some(t) => tiers
            .iter()
            .position(|k| k.as_bytes() == t)
            .unwrap_or(tiers.len() + 1),
    }
}

/// The name of a [`tier_index`].
pub(crate) fn tier_name(tiers: &[String], index: usize) -> &str {
    match tiers.get(index) {
        Some(t) => t,
        None if index == tiers.len() => "anonymous",
        None => "other",
    }
}

/// Refuses a request without an admin principal: 401 without credentials, 403
/// without [`ADMIN_SCOPE`] (in case the route table forgot to require it).
pub(crate) async fn require_admin(request: Request, next: Next) -> Response {
    match request.extensions().carried::<Principal>() {
        None => Problem::new(types::MISSING_CREDENTIALS)
            .with_header(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            )
            .into_response(),
        Some(p) if !p.scopes().contains(ADMIN_SCOPE) => Problem::new(types::INSUFFICIENT_SCOPE)
            .with_detail(format!("the {ADMIN_SCOPE} scope is required"))
            .into_response(),
        Some(_) => next.run(request).await,
    }
}
