//! Coarsened values: what tollgate keeps instead of an address or a user agent.

use std::fmt;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::USER_AGENT;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// How far client addresses are coarsened before anything sees them.
///
/// Defaults to IPv4 /24 and IPv6 /48. Finer prefixes identify a household or a
/// device, so [`Coarsening::new`] refuses them; [`Coarsening::allow_finer`] is the
/// explicit opt-in.
///
/// ```
/// use tollgate_core::coarsen::Coarsening;
///
/// let c = Coarsening::default();
/// assert_eq!(c.network("203.0.113.77".parse().unwrap()).to_string(), "203.0.113.0/24");
/// assert_eq!(c.network("2001:db8:1:2::1".parse().unwrap()).to_string(), "2001:db8:1::/48");
/// assert!(Coarsening::new(32, 48).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CoarseningConfig")]
pub struct Coarsening {
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

/// The default IPv4 prefix length.
pub const DEFAULT_IPV4_PREFIX: u8 = 24;
/// The default IPv6 prefix length.
pub const DEFAULT_IPV6_PREFIX: u8 = 48;

impl Default for Coarsening {
    fn default() -> Self {
        Coarsening {
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

/// A coarsening that would keep more of an address than the defaults allow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "coarsening to IPv4 /{ipv4} and IPv6 /{ipv6} is finer than /{DEFAULT_IPV4_PREFIX} and /{DEFAULT_IPV6_PREFIX}; set `allow_finer = true` to opt in"
)]
pub struct TooFine {
    ipv4: u8,
    ipv6: u8,
}

impl Coarsening {
    /// Prefix lengths no finer than the defaults (shorter prefixes are coarser and allowed).
    pub fn new(ipv4_prefix: u8, ipv6_prefix: u8) -> Result<Self, TooFine> {
        if ipv4_prefix > DEFAULT_IPV4_PREFIX || ipv6_prefix > DEFAULT_IPV6_PREFIX {
            return Err(TooFine {
                ipv4: ipv4_prefix,
                ipv6: ipv6_prefix,
            });
        }
        Ok(Coarsening {
            ipv4_prefix,
            ipv6_prefix,
        })
    }

    /// Any prefix lengths, finer ones included (clamped to 32 and 128).
    pub fn allow_finer(ipv4_prefix: u8, ipv6_prefix: u8) -> Self {
        Coarsening {
            ipv4_prefix: ipv4_prefix.min(32),
            ipv6_prefix: ipv6_prefix.min(128),
        }
    }

    /// The network prefix `ip` falls in. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn network(&self, ip: IpAddr) -> NetworkPrefix {
        let net = match ip.to_canonical() {
            IpAddr::V4(v4) => IpNet::V4(
                Ipv4Net::new(v4, self.ipv4_prefix)
                    .expect("prefix clamped to 32")
                    .trunc(),
            ),
            IpAddr::V6(v6) => IpNet::V6(
                Ipv6Net::new(v6, self.ipv6_prefix)
                    .expect("prefix clamped to 128")
                    .trunc(),
            ),
        };
        NetworkPrefix(net)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CoarseningConfig {
    #[serde(default = "default_v4")]
    ipv4_prefix: u8,
    #[serde(default = "default_v6")]
    ipv6_prefix: u8,
    #[serde(default)]
    allow_finer: bool,
}

fn default_v4() -> u8 {
    DEFAULT_IPV4_PREFIX
}
fn default_v6() -> u8 {
    DEFAULT_IPV6_PREFIX
}

impl TryFrom<CoarseningConfig> for Coarsening {
    type Error = TooFine;
    fn try_from(c: CoarseningConfig) -> Result<Self, TooFine> {
        if c.allow_finer {
            Ok(Coarsening::allow_finer(c.ipv4_prefix, c.ipv6_prefix))
        } else {
            Coarsening::new(c.ipv4_prefix, c.ipv6_prefix)
        }
    }
}

/// A coarsened client network, such as `203.0.113.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetworkPrefix(IpNet);

impl NetworkPrefix {
    /// The prefix as a network.
    pub fn net(&self) -> IpNet {
        self.0
    }

    /// A compact byte form (family, prefix length, network bytes) for hashing.
    pub fn to_bytes(&self) -> ([u8; 18], usize) {
        let mut out = [0u8; 18];
        out[1] = self.0.prefix_len();
        match self.0.network() {
            IpAddr::V4(v4) => {
                out[0] = 4;
                out[2..6].copy_from_slice(&v4.octets());
                (out, 6)
            }
            IpAddr::V6(v6) => {
                out[0] = 6;
                out[2..18].copy_from_slice(&v6.octets());
                (out, 18)
            }
        }
    }
}

impl fmt::Display for NetworkPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A user agent reduced to its family and major version, such as `Chrome 131`.
///
/// Parsed with [`woothee`]: a pure-Rust port of the Woothee project's rule set. It
/// needs no regular-expression engine or data file at start, and it answers exactly
/// the question tollgate asks (browser or client family, major version); full
/// ua-parser rule sets cost a large compiled regex set for detail tollgate discards.
///
/// ```
/// use tollgate_core::coarsen::UserAgentFamily;
///
/// let ua = UserAgentFamily::parse(
///     "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36",
/// );
/// assert_eq!(ua.to_string(), "Chrome 131");
/// assert_eq!(UserAgentFamily::parse("").to_string(), "other");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserAgentFamily {
    family: Box<str>,
    major: Option<u32>,
}

/// User agents longer than this are not parsed: they are classed as `other`.
const MAX_UA_LEN: usize = 512;

impl UserAgentFamily {
    /// The family of an absent or unrecognised user agent.
    pub fn other() -> Self {
        UserAgentFamily {
            family: "other".into(),
            major: None,
        }
    }

    /// Coarsens a user-agent string.
    pub fn parse(user_agent: &str) -> Self {
        if user_agent.len() > MAX_UA_LEN {
            return Self::other();
        }
        match woothee::parser::Parser::new().parse(user_agent) {
            Some(r) if r.name != woothee::woothee::VALUE_UNKNOWN => UserAgentFamily {
                family: r.name.into(),
                major: r
                    .version
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|m| m.parse().ok()),
            },
            _ => Self::other(),
        }
    }

    /// Coarsens the `User-Agent` header, if there is exactly one and it is text.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(USER_AGENT).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().map(Self::parse).unwrap_or_else(|_| Self::other()),
            _ => Self::other(),
        }
    }

    /// The family name.
    pub fn family(&self) -> &str {
        &self.family
    }

    /// The major version, when the family has one.
    pub fn major(&self) -> Option<u32> {
        self.major
    }
}

impl fmt::Display for UserAgentFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.major {
            Some(major) => write!(f, "{} {major}", self.family),
            None => f.write_str(&self.family),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_counts_as_ipv4() {
        let c = Coarsening::default();
        let mapped: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        assert_eq!(c.network(mapped).to_string(), "198.51.100.0/24");
    }

    #[test]
    fn same_prefix_same_network() {
        let c = Coarsening::default();
        let a = c.network("198.51.100.9".parse().unwrap());
        let b = c.network("198.51.100.250".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.to_bytes(), b.to_bytes());
    }

    #[test]
    fn coarser_is_allowed_finer_needs_opt_in() {
        assert!(Coarsening::new(16, 32).is_ok());
        let err = Coarsening::new(25, 48).unwrap_err();
        assert!(err.to_string().contains("allow_finer"));
        let fine = Coarsening::allow_finer(40, 200);
        assert_eq!(
            fine.network("10.1.2.3".parse().unwrap()).to_string(),
            "10.1.2.3/32"
        );
    }

    #[test]
    fn config_refuses_finer_without_opt_in() {
        let refused: Result<Coarsening, _> = serde_json::from_str(r#"{"ipv4_prefix": 32}"#);
        assert!(refused.is_err());
        let allowed: Coarsening =
            serde_json::from_str(r#"{"ipv4_prefix": 32, "allow_finer": true}"#).unwrap();
        assert_eq!(allowed, Coarsening::allow_finer(32, 48));
    }

    #[test]
    fn user_agent_families() {
        let firefox = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
        assert_eq!(UserAgentFamily::parse(firefox).to_string(), "Firefox 133");
        assert_eq!(
            UserAgentFamily::parse(&"A".repeat(10_000)),
            UserAgentFamily::other()
        );
        let mut headers = HeaderMap::new();
        headers.append(USER_AGENT, firefox.parse().unwrap());
        headers.append(USER_AGENT, firefox.parse().unwrap());
        assert_eq!(UserAgentFamily::from_headers(&headers), UserAgentFamily::other());
    }
}
