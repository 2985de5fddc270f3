//! The upstream address policy (SSRF defence): which schemes and IP addresses Switchboard may
//! connect to. The check runs twice: up front on the URL (IP literals, scheme, `localhost`) and
//! inside the client's DNS resolver, so every connection the pool opens is to an allowed address
//! whatever a name resolves to at that moment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Whether `ip` is an address Switchboard must never connect to in secure mode: loopback,
/// private, link-local, unique-local, unspecified, multicast, broadcast, documentation, CGNAT,
/// benchmarking and reserved ranges, and any IPv6 form that embeds such an IPv4 address
/// (v4-mapped, v4-compatible, NAT64, 6to4).
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                   // 0.0.0.0/8 "this network", unspecified
        || a == 10                           // private
        || a == 127                          // loopback
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10 CGNAT
        || (a == 169 && b == 254)            // link-local (cloud metadata lives here)
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)    // 192.0.0.0/24 IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)    // TEST-NET-1
        || (a == 192 && b == 88 && c == 99)  // 6to4 relay anycast (deprecated)
        || (a == 192 && b == 168)            // private
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)  // TEST-NET-3
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    // The rest of ::/8 (IPv4-compatible ::a.b.c.d, deprecated, and reserved space) is never a
    // legitimate public destination.
    if s[0] == 0 {
        return true;
    }
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // 64:ff9b::/96 NAT64 well-known prefix and 64:ff9b:1::/48 local-use NAT64.
    if s[0] == 0x64 && s[1] == 0xff9b {
        if s[2] == 1 {
            return true;
        }
        return is_forbidden_v4(embedded(s[6], s[7]));
    }
    // 2002::/16 6to4: the next 32 bits are an IPv4 address.
    if s[0] == 0x2002 {
        return is_forbidden_v4(embedded(s[1], s[2]));
    }
    (s[0] & 0xfe00) == 0xfc00                 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80          // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0          // fec0::/10 site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00          // ff00::/8 multicast
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // 100::/64 discard
        || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32 documentation
        || (s[0] & 0xfff0) == 0x3ff0          // 3fff::/20 documentation
        || (s[0] == 0x2001 && s[1] == 0)      // 2001::/32 Teredo (embeds an obfuscated v4)
        || (s[0] == 0x2001 && s[1] == 2 && s[2] == 0) // 2001:2::/48 benchmarking
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010) // 2001:10::/28 ORCHID
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0020) // 2001:20::/28 ORCHIDv2
}

/// Why a URL or address was refused. Carries no query string (only the host, which the
/// operator configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyViolation {
    /// Scheme other than `https` (or `http` in insecure mode).
    Scheme,
    /// A URL without a host.
    NoHost,
    /// An address (literal or resolved) in a forbidden range, or `localhost`.
    Address,
    /// Credentials embedded in the URL (`user:pass@host`).
    Userinfo,
}

impl PolicyViolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheme => "only https upstream URLs are allowed",
            Self::NoHost => "upstream URL has no host",
            Self::Address => "upstream address is loopback, private or otherwise reserved",
            Self::Userinfo => "upstream URL must not embed credentials",
        }
    }
}

/// Checks a URL against the policy. `allow_insecure` permits `http` and any address.
pub(crate) fn check(url: &Url, allow_insecure: bool) -> Result<(), PolicyViolation> {
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        _ => return Err(PolicyViolation::Scheme),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(PolicyViolation::Userinfo);
    }
    let host = url.host().ok_or(PolicyViolation::NoHost)?;
    if allow_insecure {
        return Ok(());
    }
    match host {
        Host::Ipv4(ip) if is_forbidden_v4(ip) => Err(PolicyViolation::Address),
        Host::Ipv6(ip) if is_forbidden_v6(ip) => Err(PolicyViolation::Address),
        Host::Domain(name) if is_localhost_name(name) => Err(PolicyViolation::Address),
        _ => Ok(()),
    }
}

fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name.len() > 10 && name[name.len() - 10..].eq_ignore_ascii_case(".localhost")
}

/// Returned (inside reqwest's error chain) by [`PolicyResolver`] when every address a name
/// resolves to is forbidden.
#[derive(Debug)]
pub(crate) struct BlockedAddress;

impl std::fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(PolicyViolation::Address.as_str())
    }
}

impl std::error::Error for BlockedAddress {}

/// DNS resolver that drops forbidden addresses; a name with no allowed address fails with
/// [`BlockedAddress`]. Installed on the shared client in secure mode.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PolicyResolver;

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if is_localhost_name(&host) {
                return Err(Box::new(BlockedAddress) as _);
            }
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = resolved.filter(|a| !is_forbidden_ip(a.ip())).collect();
            if allowed.is_empty() {
                tracing::warn!(host = %host, "upstream name resolves only to forbidden addresses");
                return Err(Box::new(BlockedAddress) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn forbidden(s: &str) -> bool {
        is_forbidden_ip(s.parse().unwrap())
    }

    #[test]
    fn v4_ranges() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.2.5",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "192.0.0.8",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "203.0.114.1",
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn v6_ranges() {
        for ip in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "64:ff9b::a00:1",
            "2002:c0a8:0101::1",
            "2001:0::1",
            "100::1",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
        }
        for ip in [
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn url_checks() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(check(&u("https://ehr.example.com/fhir/"), false), Ok(()));
        assert_eq!(
            check(&u("http://ehr.example.com/"), false),
            Err(PolicyViolation::Scheme)
        );
        assert_eq!(check(&u("http://ehr.example.com/"), true), Ok(()));
        assert_eq!(
            check(&u("ftp://ehr.example.com/"), true),
            Err(PolicyViolation::Scheme)
        );
        assert_eq!(
            check(&u("https://127.0.0.1/"), false),
            Err(PolicyViolation::Address)
        );
        assert_eq!(
            check(&u("https://[::1]/"), false),
            Err(PolicyViolation::Address)
        );
        assert_eq!(
            check(&u("https://[::ffff:192.168.0.1]/"), false),
            Err(PolicyViolation::Address)
        );
        assert_eq!(
            check(&u("https://localhost/"), false),
            Err(PolicyViolation::Address)
        );
        assert_eq!(
            check(&u("https://api.LOCALHOST./"), false),
            Err(PolicyViolation::Address)
        );
        assert_eq!(
            check(&u("https://2130706433/"), false),
            Err(PolicyViolation::Address)
        );
        assert_eq!(check(&u("https://127.0.0.1/"), true), Ok(()));
        assert_eq!(
            check(&u("https://u:p@ehr.example.com/"), false),
            Err(PolicyViolation::Userinfo)
        );
    }

    #[tokio::test]
    async fn resolver_refuses_names_resolving_to_loopback() {
        for name in ["localhost", "127.0.0.1", "::1"] {
            let err = PolicyResolver
                .resolve(Name::from_str(name).unwrap())
                .await
                .err();
            let err = err.unwrap_or_else(|| panic!("{name} resolved"));
            assert!(err.is::<BlockedAddress>(), "{name}: {err}");
        }
    }
}
