//! The operator console: server-rendered HTML (maud) over the same data as the admin
//! API, with no JavaScript build step.
//!
//! **Signing in.** The login page sends the operator's API key or token once, in a
//! header, to `POST console/session` (a few lines of inline JavaScript), which the
//! authentication layer checks like any admin request; the console then sets a
//! random session cookie (`HttpOnly`, `SameSite=Strict`, an hour). Only the
//! cookie's SHA-256 is kept.
//!
//! **Forms.** Nothing changes state on GET. Every form carries the session's random
//! token, compared in constant time, and a request whose `Origin` names another
//! host is refused: a page elsewhere cannot make the operator's browser freeze or
//! unfreeze anything.

use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_core::problem::{Problem, method_not_allowed, types};
use tollgate_core::sharded::ShardedMap;
use tollgate_core::{Clock, Freeze, FreezeTarget, KeyedDigest, SystemClock};

use super::{Operator, require_admin};

/// How long a console sign-in lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(3_600);

/// The cookie holding the console session id.
const COOKIE: &str = "tollgate_console";

/// Console sign-ins held at once; the oldest give way.
const MAX_SESSIONS: usize = 256;

/// Signed-in console sessions: SHA-256 of the session id → the form token.
pub(crate) struct Sessions(ShardedMap<[u8; 32], String>);

impl Sessions {
    pub(crate) fn new() -> Self {
        Sessions(ShardedMap::new(MAX_SESSIONS))
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system has randomness");
    hex::encode(bytes)
}

fn id_hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

pub(super) fn router(operator: Operator) -> Router {
    Router::new()
        .route(
            "/console/session",
            post(sign_in).route_layer(middleware::from_fn(require_admin)),
        )
        .route("/console", get(page))
        .route("/console/freeze", post(freeze))
        .route("/console/unfreeze", post(unfreeze))
        .route("/console/sign-out", post(sign_out))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(operator)
}

/// The form token of the signed-in session, if the request carries one.
fn session(op: &Operator, headers: &HeaderMap) -> Option<(String, String)> {
    let id = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))?
        .to_string();
    let token = op.inner.console.0.get(&id_hash(&id), SystemClock.now())?;
    Some((id, token))
}

/// A console form, carrying its session's form token.
trait ConsoleForm {
    fn token(&self) -> &str;
}

/// The form of a state-changing request, once it parsed (else a problem by the
/// rejection's status, never axum's text) and passed [`check_form`].
fn accepted_form<T: ConsoleForm>(
    op: &Operator,
    headers: &HeaderMap,
    form: Result<Form<T>, FormRejection>,
) -> Result<T, Box<Problem>> {
    let Form(form) = form.map_err(|rejected| Box::new(Problem::from(rejected)))?;
    check_form(op, headers, form.token())?;
    Ok(form)
}

/// Checks a state-changing form: a signed-in session, its token, same origin.
fn check_form(op: &Operator, headers: &HeaderMap, token: &str) -> Result<(), Box<Problem>> {
    let refused =
        |detail: &'static str| Box::new(Problem::new(types::INSUFFICIENT_SCOPE).with_detail(detail));
    let Some((_, expected)) = session(op, headers) else {
        return Err(Box::new(
            Problem::new(types::MISSING_CREDENTIALS).with_detail("sign in to the console first"),
        ));
    };
    if !bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
        return Err(refused("the form token does not match this console session"));
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if Some(origin_host) != host {
            return Err(refused("the form was sent from another site"));
        }
    }
    Ok(())
}

async fn sign_in(State(op): State<Operator>) -> Response {
    let id = random_hex();
    let now = SystemClock.now();
    op.inner
        .console
        .0
        .insert(id_hash(&id), random_hex(), now.saturating_add(SESSION_TTL), now);
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

#[derive(Deserialize)]
struct SignOut {
    token: String,
}

impl ConsoleForm for SignOut {
    fn token(&self) -> &str {
        &self.token
    }
}

async fn sign_out(
    State(op): State<Operator>,
    headers: HeaderMap,
    form: Result<Form<SignOut>, FormRejection>,
) -> Response {
    if let Err(refused) = accepted_form(&op, &headers, form) {
        return refused.into_response();
    }
    if let Some((id, _)) = session(&op, &headers) {
        op.inner.console.0.remove(&id_hash(&id), SystemClock.now());
    }
    let expired = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, expired)], Redirect::to("../console")).into_response()
}

#[derive(Deserialize)]
struct FreezeForm {
    token: String,
    kind: String,
    id: String,
    reason: String,
}

impl ConsoleForm for FreezeForm {
    fn token(&self) -> &str {
        &self.token
    }
}

async fn freeze(
    State(op): State<Operator>,
    headers: HeaderMap,
    form: Result<Form<FreezeForm>, FormRejection>,
) -> Response {
    let form = match accepted_form(&op, &headers, form) {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let id = form.id.trim();
    if id.is_empty() || id.len() > 512 {
        return Problem::new(types::MALFORMED_CREDENTIALS)
            .with_detail("give the id of the key, token or subject to freeze")
            .into_response();
    }
    let p = op.tollgate().pseudonymizer();
    let target = match form.kind.as_str() {
        "api_key" | "token" => FreezeTarget::credential(p, id),
        "subject" => FreezeTarget::subject(p, id),
        _ => {
            return Problem::new(types::MALFORMED_CREDENTIALS)
                .with_detail("kind must be api_key, token or subject")
                .into_response();
        }
    };
    let reason: String = form.reason.chars().take(200).collect();
    let freeze = Freeze {
        target,
        reason: if reason.trim().is_empty() {
            "frozen from the console".into()
        } else {
            reason
        },
        frozen_at: SystemClock.now(),
        until: None,
    };
    match op.tollgate().freeze_list().freeze(freeze).await {
        Ok(()) => Redirect::to("../console").into_response(),
        Err(e) => Problem::new(types::UNAVAILABLE)
            .with_detail(e.to_string())
            .into_response(),
    }
}

#[derive(Deserialize)]
struct UnfreezeForm {
    token: String,
    kind: String,
    digest: String,
}

impl ConsoleForm for UnfreezeForm {
    fn token(&self) -> &str {
        &self.token
    }
}

async fn unfreeze(
    State(op): State<Operator>,
    headers: HeaderMap,
    form: Result<Form<UnfreezeForm>, FormRejection>,
) -> Response {
    let form = match accepted_form(&op, &headers, form) {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let target = match (form.kind.as_str(), KeyedDigest::from_hex(&form.digest)) {
        ("credential", Some(d)) => FreezeTarget::Credential(d),
        ("subject", Some(d)) => FreezeTarget::Subject(d),
        _ => {
            return Problem::new(types::MALFORMED_CREDENTIALS)
                .with_detail("not a freeze target")
                .into_response();
        }
    };
    match op.tollgate().freeze_list().unfreeze(&target).await {
        Ok(_) => Redirect::to("../console").into_response(),
        Err(e) => Problem::new(types::UNAVAILABLE)
            .with_detail(e.to_string())
            .into_response(),
    }
}

async fn page(State(op): State<Operator>, headers: HeaderMap) -> Response {
    let body = match session(&op, &headers) {
        Some((_, token)) => dashboard(&op, &token).await,
        None => login(),
    };
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("x-frame-options"), "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222;max-width:72em}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse}td,th{padding:.25em .75em;text-align:left;border-bottom:1px solid #eee}\
code{font-size:12px}.n{text-align:right}.unhealthy{color:#b00}.suspicious{color:#b60}\
form.inline{display:inline}input,select,button{font:inherit}";

fn shell(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (content) }
        }
    }
}

fn login() -> Markup {
    shell(
        "tollgate console: sign in",
        html! {
            h1 { "tollgate console" }
            p { "Sign in with a credential that holds the " code { (super::ADMIN_SCOPE) } " scope." }
            form #login {
                select #scheme {
                    option value="x-api-key" { "API key" }
                    option value="authorization" { "Bearer token" }
                }
                " "
                input #credential type="password" autocomplete="off" placeholder="credential" required;
                " "
                button #sign-in type="submit" { "Sign in" }
            }
            p #message {}
            script { (PreEscaped(r#"
document.getElementById('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const scheme = document.getElementById('scheme').value;
  const value = document.getElementById('credential').value;
  const headers = scheme === 'authorization' ? { authorization: 'Bearer ' + value } : { 'x-api-key': value };
  const r = await fetch('console/session', { method: 'POST', headers, credentials: 'same-origin' });
  if (r.ok) { location.reload(); } else { document.getElementById('message').textContent = 'refused (' + r.status + ')'; }
});
"#)) }
        },
    )
}

/// The anomaly tags of the last hour as bars per minute (inline SVG).
fn chart(per_minute: &[(u64, std::collections::BTreeMap<&'static str, u64>)]) -> Markup {
    let now = SystemClock.now().as_secs() / 60;
    let totals: Vec<(u64, u64)> = (0..super::WINDOW_MINUTES as u64)
        .rev()
        .map(|ago| {
            let minute = now - ago;
            let total = per_minute
                .iter()
                .find(|(m, _)| *m == minute)
                .map_or(0, |(_, kinds)| kinds.values().sum());
            (minute, total)
        })
        .collect();
    let max = totals.iter().map(|t| t.1).max().unwrap_or(0).max(1);
    let (w, h) = (600u64, 120u64);
    let bar = w / super::WINDOW_MINUTES as u64;
    html! {
        svg #anomaly-chart width=(w) height=(h + 20) viewBox=(format!("0 0 {w} {}", h + 20)) role="img" aria-label="anomaly tags per minute, last hour" {
            line x1="0" y1=(h) x2=(w) y2=(h) stroke="#999" {}
            @for (i, (minute, total)) in totals.iter().enumerate() {
                @let height = total * h / max;
                rect x=(i as u64 * bar) y=(h - height) width=(bar.saturating_sub(1)) height=(height) fill="#c44" {
                    title { (format!("{} min ago: {total}", now - minute)) }
                }
            }
            text x="0" y=(h + 15) font-size="11" { "60 min ago" }
            text x=(w - 30) y=(h + 15) font-size="11" { "now" }
            text x=(w - 60) y="12" font-size="11" { "max " (max) }
        }
    }
}

async fn dashboard(op: &Operator, token: &str) -> Markup {
    let activity = op.activity();
    let summary = activity.summary();
    let flagged = activity.flagged();
    let frozen: Vec<Value> = match op.tollgate().freeze_list().list().await {
        Ok(list) => list.iter().filter_map(|f| serde_json::to_value(f).ok()).collect(),
        Err(_) => Vec::new(),
    };
    let tiers = super::admin::tier_usage(op);
    let inventory = super::admin::inventory_with_sizes(op).await;
    let empty = Vec::new();
    shell(
        "tollgate console",
        html! {
            h1 { "tollgate console" }
            form.inline method="post" action="console/sign-out" {
                input type="hidden" name="token" value=(token);
                button type="submit" { "Sign out" }
            }
            p { "Everything here is pseudonymous: no page shows an address, a key, a token, a subject or a user agent." }

            h2 { "Frozen credentials (" (frozen.len()) ")" }
            form #freeze-form method="post" action="console/freeze" {
                input type="hidden" name="token" value=(token);
                select name="kind" {
                    option value="api_key" { "API key id" }
                    option value="token" { "token jti" }
                    option value="subject" { "subject" }
                }
                " "
                input #freeze-id name="id" required placeholder="id (hashed at once, never stored)";
                " "
                input name="reason" placeholder="reason (no personal data)";
                " "
                button #freeze-submit type="submit" { "Freeze" }
            }
            table #frozen {
                tr { th { "target" } th { "reason" } th { "frozen at" } th { "until" } th {} }
                @for f in &frozen {
                    tr {
                        td { (f["target"]["kind"].as_str().unwrap_or("")) " " code { (f["target"]["digest"].as_str().unwrap_or("")) } }
                        td { (f["reason"].as_str().unwrap_or("")) }
                        td { (f["frozen_at"].as_u64().map_or(String::new(), |t| now_minus(t / 60_000_000_000))) }
                        td { (f["until"].as_u64().map_or("until lifted".to_string(), |t| in_minutes(t / 60_000_000_000))) }
                        td {
                            form.inline method="post" action="console/unfreeze" {
                                input type="hidden" name="token" value=(token);
                                input type="hidden" name="kind" value=(f["target"]["kind"].as_str().unwrap_or(""));
                                input type="hidden" name="digest" value=(f["target"]["digest"].as_str().unwrap_or(""));
                                button type="submit" { "Unfreeze" }
                            }
                        }
                    }
                }
            }

            h2 { "Sessions, last hour" }
            p #verdicts {
                @for (health, n) in &summary.verdicts {
                    span class=(health) { (health) ": " (n) } " · "
                }
                @for (reason, n) in &summary.reasons {
                    code { (reason) } " " (n) " · "
                }
            }
            table #flagged {
                tr { th { "session (pseudonym)" } th { "health" } th { "reasons" } th { "anomalies" } th { "last seen" } }
                @for s in &flagged {
                    tr {
                        td { code { (s.session) } }
                        td class=(s.health) { (s.health) }
                        td { (s.reasons.join(", ")) }
                        td { (s.anomalies.join(", ")) }
                        td { (now_minus(s.last_seen_minute)) }
                    }
                }
            }

            h2 { "Anomaly tags, last hour" }
            (chart(&summary.anomalies_per_minute))
            p {
                @for (kind, n) in &summary.anomalies {
                    code { (kind) } " " (n) " · "
                }
            }

            h2 { "Tiers and usage, last hour" }
            table #tiers {
                tr { th { "tier" } th { "limits" } th.n { "requests" } th.n { "rate-limited" } }
                @for t in tiers["tiers"].as_array().unwrap_or(&empty) {
                    tr {
                        td { (t["name"].as_str().unwrap_or("")) }
                        td {
                            @for l in t["limits"].as_array().unwrap_or(&empty) {
                                (l["name"].as_str().unwrap_or("")) ": " (l["quota"].to_string()) " / " (l["window_s"].to_string()) " s  "
                            }
                        }
                        td.n { (t["requests"].to_string()) }
                        td.n { (t["limited"].to_string()) }
                    }
                }
            }

            h2 { "Data inventory" }
            table #stores {
                tr { th { "store" } th.n { "entries now" } th.n { "capacity" } }
                @for s in inventory["stores"].as_array().unwrap_or(&empty) {
                    tr {
                        td { code { (s["name"].as_str().unwrap_or("")) } }
                        td.n { (s["entries"].to_string()) }
                        td.n { (s.get("capacity").map_or(String::new(), Value::to_string)) }
                    }
                }
            }
            table #inventory {
                tr { th { "field" } th { "layer" } th { "protection" } th { "purpose" } th { "retention" } }
                @for f in inventory["fields"].as_array().unwrap_or(&empty) {
                    tr {
                        td { code { (f["name"].as_str().unwrap_or("")) } }
                        td { (f["layer"].as_str().unwrap_or("")) }
                        td { (f["protection"].as_str().unwrap_or("")) }
                        td { (f["purpose"].as_str().unwrap_or("")) }
                        td { (retention(&f["retention"])) }
                    }
                }
            }
        },
    )
}

/// A retention as the inventory serializes it, in words.
fn retention(r: &Value) -> String {
    match (r["kind"].as_str(), r["seconds"].as_u64()) {
        (Some("ttl"), Some(s)) if s % 3600 == 0 => format!("{} h", s / 3600),
        (Some("ttl"), Some(s)) if s % 60 == 0 => format!("{} min", s / 60),
        (Some("ttl"), Some(s)) => format!("{s} s"),
        (Some("request"), _) => "this request".into(),
        (Some("log_pipeline"), _) => "as long as the logs".into(),
        (Some(other), _) => other.replace('_', " "),
        _ => r.to_string(),
    }
}

fn in_minutes(minute: u64) -> String {
    let now = SystemClock.now().as_secs() / 60;
    format!("in {} min", minute.saturating_sub(now))
}

fn now_minus(minute: u64) -> String {
    let now = SystemClock.now().as_secs() / 60;
    match now.saturating_sub(minute) {
        0 => "this minute".into(),
        n => format!("{n} min ago"),
    }
}
