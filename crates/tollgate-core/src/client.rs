//! Who is calling, as far as the network can tell: the client's coarsened network,
//! resolved through trusted proxies only.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts};
use http::header::FORWARDED;
use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderName};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::carry::CarryExt;
use crate::coarsen::{Coarsening, NetworkPrefix};
use crate::problem::Problem;
use crate::pseudonym::{Domain, Pseudonym, Pseudonymizer};

/// A constant, as a name given as text is parsed on every lookup.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Which forwarding header trusted proxies write.
///
/// Only one is read: a proxy that sets `X-Forwarded-For` usually passes a
/// client-sent `Forwarded` header through untouched, so reading both would let a
/// client choose its own address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// How the client's network is found and coarsened.
///
/// ```
/// use tollgate_core::client::ClientConfig;
///
/// let config = ClientConfig::default().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
/// assert_eq!(config.trusted_proxies().len(), 1);
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    trusted_proxies: Vec<IpNet>,
    forwarded_header: ForwardedHeader,
    max_forwarded_hops: usize,
    coarsening: Coarsening,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            max_forwarded_hops: 16,
            coarsening: Coarsening::default(),
        }
    }
}

impl ClientConfig {
    /// Trusts forwarding headers from peers in these networks.
    pub fn trust_proxies(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted_proxies.extend(nets);
        self
    }

    /// Reads this forwarding header from trusted proxies.
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.forwarded_header = header;
        self
    }

    /// Examines at most this many hops from the right of the forwarding chain.
    pub fn max_forwarded_hops(mut self, hops: usize) -> Self {
        self.max_forwarded_hops = hops;
        self
    }

    /// Coarsens client addresses this way.
    pub fn coarsening(mut self, coarsening: Coarsening) -> Self {
        self.coarsening = coarsening;
        self
    }

    /// The trusted proxy networks.
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the
    /// rightmost hop of the forwarding chain that is not itself a trusted proxy.
    ///
    /// Hostile chains are bounded: at most `max_forwarded_hops` entries are read,
    /// and an unparsable or obfuscated hop stops the walk at the last trusted hop.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tollgate_core::client::ClientConfig;
    ///
    /// let config = ClientConfig::default().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
    /// let mut headers = HeaderMap::new();
    /// headers.insert("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.2".parse().unwrap());
    /// let peer = "10.0.0.1".parse().unwrap();
    /// assert_eq!(config.client_address(peer, &headers), "198.51.100.7".parse::<std::net::IpAddr>().unwrap());
    ///
    /// // The same header from an untrusted peer changes nothing.
    /// let stranger = "203.0.113.5".parse().unwrap();
    /// assert_eq!(config.client_address(stranger, &headers), stranger);
    /// ```
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.is_trusted(client) {
            return client;
        }
        let name = match self.forwarded_header {
            ForwardedHeader::XForwardedFor => X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => FORWARDED,
        };
        // Later header lines were appended by nearer proxies: walk them last-first.
        let hops = headers
            .get_all(name)
            .iter()
            .rev()
            .flat_map(|v| v.to_str().unwrap_or("").rsplit(','))
            .take(self.max_forwarded_hops);
        for hop in hops {
            let parsed = match self.forwarded_header {
                ForwardedHeader::XForwardedFor => parse_node(hop.trim()),
                ForwardedHeader::Forwarded => forwarded_for(hop),
            };
            let Some(ip) = parsed else { break };
            client = ip.to_canonical();
            if !self.is_trusted(client) {
                break;
            }
        }
        client
    }

    /// The request's client, the one way every layer finds it: the [`ClientContext`]
    /// an outer layer already resolved, else resolved here from the peer address
    /// (axum's `ConnectInfo<SocketAddr>`), the forwarding header of trusted proxies
    /// and this configuration's coarsening. `None` when the peer is unknown (a
    /// server started without `into_make_service_with_connect_info`).
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use axum::extract::ConnectInfo;
    /// use http::{Extensions, HeaderMap};
    /// use tollgate_core::{ClientConfig, Pseudonymizer, PseudonymSecret};
    ///
    /// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[3; 32]).unwrap(), Duration::from_secs(3600));
    /// let config = ClientConfig::default().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
    /// let mut headers = HeaderMap::new();
    /// headers.insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
    /// let mut ext = Extensions::new();
    /// ext.insert(ConnectInfo("10.0.0.1:4000".parse::<SocketAddr>().unwrap()));
    /// let client = config.resolve(&ext, &headers, &p).unwrap();
    /// assert_eq!(client.network().to_string(), "198.51.100.0/24");
    /// ```
    pub fn resolve(
        &self,
        extensions: &Extensions,
        headers: &HeaderMap,
        p: &Pseudonymizer,
    ) -> Option<ClientContext> {
        if let Some(client) = extensions.carried::<ClientContext>() {
            return Some(*client);
        }
        let ConnectInfo(peer) = extensions.get::<ConnectInfo<SocketAddr>>()?;
        Some(self.context(peer.ip(), headers, p))
    }

    /// The [`ClientContext`] of a request from `peer` with these headers.
    pub fn context(&self, peer: IpAddr, headers: &HeaderMap, p: &Pseudonymizer) -> ClientContext {
        let network = self.coarsening.network(self.client_address(peer, headers));
        let (bytes, len) = network.to_bytes();
        ClientContext {
            network,
            network_pseudonym: p.pseudonym_memoized(Domain::NETWORK, &bytes[..len]),
        }
    }
}

/// The `for=` node of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(value.trim().trim_matches('"')))
            .flatten()
    })
}

/// An address with an optional port: `198.51.100.7`, `198.51.100.7:443`,
/// `2001:db8::1`, `[2001:db8::1]:443`. Obfuscated nodes (`unknown`, `_hidden`) are `None`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(node) {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return IpAddr::from_str(rest.split(']').next()?).ok();
    }
    SocketAddr::from_str(node).ok().map(|s| s.ip())
}

/// The client as the rest of the stack sees it: a coarsened network and its
/// pseudonym, never the address itself.
///
/// [`PrivacyTraceLayer`](https://docs.rs/tollgate-privacy) carries it in the request
/// ([`CarryExt`]); handlers can extract it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientContext {
    network: NetworkPrefix,
    network_pseudonym: Pseudonym,
}

impl ClientContext {
    /// The coarsened network prefix.
    pub fn network(&self) -> NetworkPrefix {
        self.network
    }

    /// The pseudonym of the coarsened network, for logs and per-network state.
    pub fn network_pseudonym(&self) -> Pseudonym {
        self.network_pseudonym
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientContext {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .carried::<ClientContext>()
            .copied()
            .ok_or_else(|| {
                Problem::misconfigured("ClientContext is missing: wrap the router in PrivacyTraceLayer")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClientConfig {
        ClientConfig::default().trust_proxies(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.parse::<http::HeaderName>().unwrap(), v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_ignores_headers() {
        let h = headers("x-forwarded-for", &["198.51.100.7"]);
        assert_eq!(config().client_address(ip("203.0.113.9"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn rightmost_untrusted_hop_wins_over_spoofed_left_entries() {
        // The client sent "6.6.6.6"; the proxy appended the real address.
        let h = headers("x-forwarded-for", &["6.6.6.6, 198.51.100.7"]);
        assert_eq!(config().client_address(ip("10.0.0.1"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn repeated_header_lines_are_one_chain() {
        let h = headers("x-forwarded-for", &["6.6.6.6", "198.51.100.7, 10.1.1.1"]);
        assert_eq!(config().client_address(ip("10.0.0.1"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn garbage_hop_stops_at_last_trusted() {
        let h = headers("x-forwarded-for", &["198.51.100.7, not-an-ip, 10.1.1.1"]);
        assert_eq!(config().client_address(ip("10.0.0.1"), &h), ip("10.1.1.1"));
    }

    #[test]
    fn all_trusted_chain_gives_leftmost_read() {
        let h = headers("x-forwarded-for", &["10.9.9.9, 10.1.1.1"]);
        assert_eq!(config().client_address(ip("10.0.0.1"), &h), ip("10.9.9.9"));
    }

    #[test]
    fn hop_limit_bounds_work() {
        let long = vec!["10.2.2.2"; 10_000].join(",");
        let h = headers("x-forwarded-for", &[&format!("198.51.100.7,{long}")]);
        let cfg = config().max_forwarded_hops(8);
        assert_eq!(cfg.client_address(ip("10.0.0.1"), &h), ip("10.2.2.2"));
    }

    #[test]
    fn forwarded_header_forms() {
        let cfg = config().forwarded_header(ForwardedHeader::Forwarded);
        let h = headers(
            "forwarded",
            &[r#"for=6.6.6.6, For="[2001:db8:cafe::17]:4711";proto=https, for=10.1.1.1;by=10.0.0.1"#],
        );
        assert_eq!(cfg.client_address(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let hidden = headers("forwarded", &["for=_hidden, for=198.51.100.7:80"]);
        assert_eq!(cfg.client_address(ip("10.0.0.1"), &hidden), ip("198.51.100.7"));
        let unknown = headers("forwarded", &["for=unknown"]);
        assert_eq!(cfg.client_address(ip("10.0.0.1"), &unknown), ip("10.0.0.1"));
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let h = headers("forwarded", &["for=6.6.6.6"]);
        assert_eq!(config().client_address(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_trusted_proxy_and_mapped_peer() {
        let h = headers("x-forwarded-for", &["2001:db8:1:2::5"]);
        assert_eq!(config().client_address(ip("fd00::1"), &h), ip("2001:db8:1:2::5"));
        assert_eq!(
            config().client_address(ip("::ffff:10.0.0.1"), &h),
            ip("2001:db8:1:2::5")
        );
    }
}
