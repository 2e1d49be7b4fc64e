//! `allowed_outbound_hosts` in Spin's syntax: `scheme://host[:port]`, each part
//! possibly a `*` wildcard, the host possibly `*.domain` or a CIDR range, the port a
//! number, a range or the scheme's well-known port; and what a list of them says
//! about a destination. edge-host's outbound hook enforces it.

use std::fmt;
use std::net::IpAddr;

use anyhow::{Context, Result, bail, ensure};

/// The scheme part of an allowed-hosts entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemeRule {
    Any,
    Is(String),
}

/// The host part of an allowed-hosts entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    /// `*`
    Any,
    /// `*.example.com`, stored as `.example.com`.
    AnySubdomain(String),
    /// `self`: requests to the app itself (relative URLs); never matches an
    /// absolute URL here.
    ToSelf,
    Domain(String),
    Ip(IpAddr),
    Cidr(IpAddr, u8),
}

/// The port part of an allowed-hosts entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    Any,
    Port(u16),
    /// `a..b`, end exclusive as in Spin.
    Range(u16, u16),
}

/// One `allowed_outbound_hosts` entry: `scheme://host[:port]`, each part
/// possibly a `*` wildcard, the host possibly `*.domain` or a CIDR range,
/// the port defaulting to the scheme's well-known port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    original: String,
    scheme: SchemeRule,
    host: HostRule,
    port: PortRule,
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

/// Well-known ports, as Spin defines them for allowed-hosts entries.
pub fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        _ => None,
    }
}

impl AllowedHost {
    /// Parse an entry in Spin's syntax.
    pub fn parse(entry: &str) -> Result<AllowedHost> {
        let original = entry.to_string();
        let text = entry.trim();
        let Some((scheme, rest)) = text.split_once("://") else {
            bail!(
                "{text:?} is not an allowed outbound host: use <scheme>://<host>[:<port>], with '*' wildcards allowed for each (e.g. https://example.com, http://127.0.0.1:8081, https://*.example.com, *://*:*)"
            );
        };
        let scheme_rule = if scheme == "*" {
            SchemeRule::Any
        } else {
            ensure!(
                !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphabetic()),
                "invalid scheme {scheme:?}"
            );
            SchemeRule::Is(scheme.to_ascii_lowercase())
        };

        // A trailing slash is tolerated; any other path is not.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_host_port(rest)?;
        ensure!(!host.is_empty(), "{text:?} has no host");

        let port_rule = if port.is_empty() {
            let scheme = scheme.to_ascii_lowercase();
            let port = well_known_port(&scheme).with_context(|| {
                format!("{text:?} has no port and scheme {scheme:?} has no well-known default port")
            })?;
            PortRule::Port(port)
        } else if port == "*" {
            PortRule::Any
        } else if let Some((a, b)) = port.split_once("..") {
            let a = a
                .parse()
                .with_context(|| format!("invalid port range {port:?}"))?;
            let b = b
                .parse()
                .with_context(|| format!("invalid port range {port:?}"))?;
            PortRule::Range(a, b)
        } else {
            PortRule::Port(
                port.parse()
                    .with_context(|| format!("invalid port {port:?}"))?,
            )
        };

        let host_rule = parse_host_rule(host)?;
        Ok(AllowedHost {
            original,
            scheme: scheme_rule,
            host: host_rule,
            port: port_rule,
        })
    }

    fn allows_scheme(&self, scheme: &str) -> bool {
        match &self.scheme {
            SchemeRule::Any => true,
            SchemeRule::Is(s) => s.eq_ignore_ascii_case(scheme),
        }
    }

    fn allows_port(&self, port: u16) -> bool {
        match self.port {
            PortRule::Any => true,
            PortRule::Port(p) => p == port,
            PortRule::Range(a, b) => (a..b).contains(&port),
        }
    }

    fn allows_host(&self, host: &Host) -> bool {
        match (&self.host, host) {
            (HostRule::Any, _) => true,
            (HostRule::AnySubdomain(suffix), Host::Domain(d)) => d.ends_with(suffix.as_str()),
            (HostRule::Domain(a), Host::Domain(b)) => a == b,
            (HostRule::Ip(a), Host::Ip(b)) => canonical(*a) == canonical(*b),
            (HostRule::Cidr(net, len), Host::Ip(ip)) => cidr_contains(*net, *len, *ip),
            _ => false,
        }
    }

    /// Whether the entry names the host explicitly (not through a wildcard):
    /// such an entry may reach non-public addresses.
    fn is_explicit(&self) -> bool {
        matches!(
            self.host,
            HostRule::Domain(_) | HostRule::Ip(_) | HostRule::Cidr(..)
        )
    }
}

/// Split `host[:port]` where host may be a bracketed IPv6 literal or a CIDR.
fn split_host_port(rest: &str) -> Result<(&str, &str)> {
    if let Some(after) = rest.strip_prefix('[') {
        let (host, tail) = after
            .split_once(']')
            .with_context(|| format!("unclosed '[' in {rest:?}"))?;
        let port = match tail {
            "" => "",
            t => t
                .strip_prefix(':')
                .with_context(|| format!("unexpected {t:?} after IPv6 address"))?,
        };
        return Ok((host, port));
    }
    // An unbracketed IPv6 literal or CIDR has several colons and no port.
    if rest.matches(':').count() > 1 {
        return Ok((rest, ""));
    }
    let (host, port) = rest.split_once(':').unwrap_or((rest, ""));
    ensure!(
        !port.contains('/'),
        "{rest:?} has a path, which allowed outbound hosts may not have"
    );
    Ok((host, port))
}

fn parse_host_rule(host: &str) -> Result<HostRule> {
    if host == "*" {
        return Ok(HostRule::Any);
    }
    if host == "self" || host == "self.alt" {
        return Ok(HostRule::ToSelf);
    }
    if let Some((net, len)) = host.split_once('/') {
        let ip: IpAddr = net.parse().with_context(|| {
            format!("{host:?} has a path, which allowed outbound hosts may not have")
        })?;
        let len: u8 = len
            .parse()
            .with_context(|| format!("invalid CIDR prefix length in {host:?}"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        ensure!(len <= max, "invalid CIDR prefix length in {host:?}");
        return Ok(HostRule::Cidr(ip, len));
    }
    if let Some(domain) = host.strip_prefix("*.") {
        ensure!(
            !domain.contains('*'),
            "wildcards are allowed only as a leading '*.' in {host:?}"
        );
        let Host::Domain(domain) = Host::parse(domain)? else {
            bail!("a wildcard must be followed by a domain, not an IP address: {host:?}");
        };
        return Ok(HostRule::AnySubdomain(format!(".{domain}")));
    }
    ensure!(
        !host.contains('*'),
        "wildcards are allowed only as a leading '*.' in {host:?}"
    );
    Ok(match Host::parse(host)? {
        Host::Domain(d) => HostRule::Domain(d),
        Host::Ip(ip) => HostRule::Ip(ip),
    })
}

/// A request's host: a (lower-cased) domain name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Domain(String),
    Ip(IpAddr),
}

impl Host {
    /// Parse a URL host (IPv6 literals with or without brackets).
    pub fn parse(host: &str) -> Result<Host> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let domain = host.trim_end_matches('.').to_ascii_lowercase();
        ensure!(
            !domain.is_empty()
                && domain.len() <= 253
                && domain.split('.').all(|l| !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')),
            "invalid host name {host:?}"
        );
        Ok(Host::Domain(domain))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// IPv4-mapped IPv6 addresses compare (and are classified) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn cidr_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (canonical(net), canonical(ip)) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// What the allowed list says about a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not allowed.
    Denied,
    /// Allowed; `explicit` when a matching entry names the host itself, so
    /// non-public addresses may be reached.
    Allowed { explicit: bool },
}

/// Checks a scheme, host and port against an allowed list: denied, or allowed, and
/// then whether by an entry that names the host itself.
pub fn verdict(allowed: &[AllowedHost], scheme: &str, host: &Host, port: u16) -> Verdict {
    let mut verdict = Verdict::Denied;
    for entry in allowed {
        if entry.allows_scheme(scheme) && entry.allows_host(host) && entry.allows_port(port) {
            if entry.is_explicit() {
                return Verdict::Allowed { explicit: true };
            }
            verdict = Verdict::Allowed { explicit: false };
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> Vec<AllowedHost> {
        entries
            .iter()
            .map(|e| AllowedHost::parse(e).unwrap())
            .collect()
    }

    fn verdict(p: &[AllowedHost], url: &str) -> Verdict {
        let uri: http::Uri = url.parse().unwrap();
        let scheme = uri.scheme_str().unwrap();
        let host = Host::parse(uri.host().unwrap()).unwrap();
        let port = uri.port_u16().unwrap_or(well_known_port(scheme).unwrap());
        super::verdict(p, scheme, &host, port)
    }

    const DENIED: Verdict = Verdict::Denied;
    const WILD: Verdict = Verdict::Allowed { explicit: false };
    const NAMED: Verdict = Verdict::Allowed { explicit: true };

    #[test]
    fn parse_errors() {
        for bad in [
            "example.com",
            "*",
            "ftp://example.com",
            "http://example.com/path",
            "http://ex*ample.com",
            "http://*.*.com",
            "https://example.com:notaport",
            "http1://example.com",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
        for good in [
            "https://example.com",
            "https://example.com/",
            "http://127.0.0.1:8081",
            "*://*:*",
            "https://*:443",
            "http://[::1]:8080",
            "http://10.0.0.0/8:80",
            "http://localhost:3000..3010",
            "mysql://db.example.com",
        ] {
            AllowedHost::parse(good).unwrap_or_else(|e| panic!("{good}: {e:#}"));
        }
    }

    #[test]
    fn matching() {
        let p = policy(&[
            "https://*:443",
            "http://127.0.0.1:8081",
            "https://*.example.org",
            "http://api.test:8000..8002",
            "*://exact.test:*",
        ]);
        assert_eq!(verdict(&p, "https://images.example.com/x.png"), WILD);
        assert_eq!(verdict(&p, "https://images.example.com:8443/x.png"), DENIED);
        assert_eq!(verdict(&p, "http://images.example.com/x.png"), DENIED);
        assert_eq!(verdict(&p, "http://127.0.0.1:8081/v1/generate"), NAMED);
        assert_eq!(verdict(&p, "http://127.0.0.1:8082/"), DENIED);
        assert_eq!(verdict(&p, "http://a.example.org:443/"), DENIED);
        assert_eq!(verdict(&p, "https://a.b.example.org/"), WILD);
        assert_eq!(verdict(&p, "http://api.test:8001/"), NAMED);
        assert_eq!(verdict(&p, "http://api.test:8002/"), DENIED);
        assert_eq!(verdict(&p, "http://EXACT.test:1234/"), NAMED);
        assert_eq!(verdict(&p, "https://exact.test/"), NAMED);
        // The wildcard https entry and a named entry: named wins.
        let p = policy(&["https://*:443", "https://intranet.test"]);
        assert_eq!(verdict(&p, "https://intranet.test/"), NAMED);
    }

    #[test]
    fn subdomain_wildcard_excludes_apex() {
        let p = policy(&["https://*.example.org"]);
        assert_eq!(verdict(&p, "https://example.org/"), DENIED);
    }

    #[test]
    fn cidr_and_ipv6() {
        let p = policy(&["http://10.0.0.0/8:80", "http://[::1]:8080"]);
        assert_eq!(verdict(&p, "http://10.1.2.3/"), NAMED);
        assert_eq!(verdict(&p, "http://11.1.2.3/"), DENIED);
        assert_eq!(verdict(&p, "http://[::1]:8080/"), NAMED);
        assert_eq!(verdict(&p, "http://[::2]:8080/"), DENIED);
    }
}
