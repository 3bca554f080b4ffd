//! RFC 9728 OAuth 2.0 Protected Resource Metadata, served by the layer itself at
//! `/.well-known/oauth-protected-resource` (plus the resource's path, §3.1), so
//! clients find the authorization servers, bearer methods and DPoP algorithms.

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use serde_json::{Map, Value, json};
use tollgate_core::ConfigError;

use crate::config::ResourceMetadataConfig;
use crate::dpop::normalize_htu;

/// The well-known path prefix (RFC 9728 §3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata document, ready to serve.
#[derive(Debug)]
pub(crate) struct ResourceMetadata {
    /// The path the layer answers on.
    pub(crate) path: String,
    /// The absolute URL of the document, for `resource_metadata` in challenges.
    pub(crate) url: String,
    body: String,
}

impl ResourceMetadata {
    pub(crate) fn new(
        c: &ResourceMetadataConfig,
        issuers: Vec<String>,
        dpop_algs: Option<Vec<&'static str>>,
        dpop_always: bool,
    ) -> Result<Self, ConfigError> {
        let setting = "auth.resource_metadata.resource";
        let normalized = normalize_htu(&c.resource)
            .filter(|_| !c.resource.contains(['?', '#']))
            .ok_or_else(|| {
                ConfigError::new(
                    setting,
                    "must be an absolute http(s) URI without query or fragment",
                )
            })?;
        let (scheme, rest) = normalized
            .split_once("://")
            .expect("normalised URIs have a scheme");
        let (authority, resource_path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let path = format!("{WELL_KNOWN}{resource_path}");
        let url = format!("{scheme}://{authority}{path}");
        let servers = if c.authorization_servers.is_empty() {
            issuers
        } else {
            c.authorization_servers.clone()
        };
        let mut doc = Map::new();
        doc.insert("resource".into(), json!(c.resource));
        if !servers.is_empty() {
            doc.insert("authorization_servers".into(), json!(servers));
        }
        doc.insert("bearer_methods_supported".into(), json!(["header"]));
        if !c.scopes_supported.is_empty() {
            doc.insert("scopes_supported".into(), json!(c.scopes_supported));
        }
        if let Some(name) = &c.resource_name {
            doc.insert("resource_name".into(), json!(name));
        }
        if let Some(docs) = &c.resource_documentation {
            doc.insert("resource_documentation".into(), json!(docs));
        }
        if let Some(algs) = dpop_algs {
            doc.insert("dpop_signing_alg_values_supported".into(), json!(algs));
        }
        if dpop_always {
            doc.insert("dpop_bound_access_tokens_required".into(), json!(true));
        }
        Ok(ResourceMetadata {
            path,
            url,
            body: Value::Object(doc).to_string(),
        })
    }

    /// The document, if `req` asks for it.
    pub(crate) fn answer<B>(&self, req: &Request<B>) -> Option<Response> {
        if req.uri().path() != self.path || !(req.method() == Method::GET || req.method() == Method::HEAD) {
            return None;
        }
        let mut response = self.body.clone().into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
        Some(response)
    }
}
