//! Which input-image URLs the edge may fetch. An image URL comes from the client,
//! so fetching it blindly would let anyone make our servers call internal
//! services (SSRF). The rule: public https hosts are fine; anything else (plain
//! http, private, loopback, link-local and cloud-metadata addresses) only when the
//! `image_hosts` variable names its origin explicitly. The local runtime applies
//! the same rule to what hostnames resolve to; Spin's allowed_outbound_hosts is a
//! second, independent gate.

use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

use crate::api_error::ApiError;

/// scheme://host:port, with the scheme's default port filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    pub fn of(url: &Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme().to_ascii_lowercase(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }

    /// Parses "http://127.0.0.1:8000" (a path, if any, is ignored).
    pub fn parse(s: &str) -> Result<Origin, String> {
        let url = Url::parse(s.trim()).map_err(|e| format!("{s:?} is not an origin URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{s:?}: only http and https origins can be allowed"));
        }
        Origin::of(&url).ok_or_else(|| format!("{s:?} has no host"))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The image-host allowlist.
#[derive(Debug, Clone, Default)]
pub struct ImageHosts {
    extra: Vec<Origin>,
}

impl ImageHosts {
    /// Parses the comma-separated `image_hosts` variable.
    pub fn parse(list: &str) -> Result<ImageHosts, String> {
        let extra = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Origin::parse)
            .collect::<Result<_, _>>()?;
        Ok(ImageHosts { extra })
    }

    /// Whether the edge may fetch `url`; `field` names the request field for messages.
    pub fn check(&self, url: &Url, field: &str) -> Result<(), ApiError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ApiError::field(
                field,
                format!(
                    "only http and https URLs are accepted (got {}:)",
                    url.scheme()
                ),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ApiError::field(
                field,
                "URLs with credentials are not accepted",
            ));
        }
        let Some(origin) = Origin::of(url) else {
            return Err(ApiError::field(field, "the URL has no host"));
        };
        if self.extra.contains(&origin) {
            return Ok(());
        }
        if let Some(reason) = non_public(url) {
            return Err(ApiError::field(
                field,
                format!("{origin} is {reason}; such image hosts must be listed in image_hosts"),
            ));
        }
        if origin.scheme != "https" {
            return Err(ApiError::field(
                field,
                format!(
                    "{origin} is not an allowed image host: public https URLs are, others must be listed in image_hosts"
                ),
            ));
        }
        Ok(())
    }
}

/// Why a URL's host is not a public internet host, if it isn't.
fn non_public(url: &Url) -> Option<&'static str> {
    match url.host()? {
        Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            (d == "localhost"
                || d.ends_with(".localhost")
                || d.ends_with(".internal")
                || !d.contains('.'))
            .then_some("a local host name")
        }
        // IANA's special-purpose registries, the same table edge-host applies to
        // every address a name resolves to.
        Host::Ipv4(ip) => address_policy::special(IpAddr::V4(ip)),
        Host::Ipv6(ip) => address_policy::special(IpAddr::V6(ip)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(hosts: &str, url: &str) -> Result<(), String> {
        let url = Url::parse(url).unwrap();
        ImageHosts::parse(hosts)
            .unwrap()
            .check(&url, "inputImage")
            .map_err(|e| e.message)
    }

    #[test]
    fn public_https_is_allowed() {
        assert!(
            check(
                "",
                "https://pub-1fb693cb11cc46b2b2f656f51e015a2c.r2.dev/dog.png"
            )
            .is_ok()
        );
        assert!(check("", "https://8.8.8.8/x.png").is_ok());
    }

    #[test]
    fn plain_http_needs_the_allowlist() {
        let e = check("", "http://example.com/a.png").unwrap_err();
        assert!(e.contains("not an allowed image host"), "{e}");
        assert!(check("http://example.com", "http://example.com/a.png").is_ok());
        assert!(check("http://example.com:80/", "http://example.com/a.png").is_ok());
        assert!(check("http://example.com:8080", "http://example.com/a.png").is_err());
    }

    #[test]
    fn private_and_special_addresses_are_refused_unless_listed() {
        for (url, reason) in [
            ("https://127.0.0.1/a.png", "loopback"),
            ("https://2130706433/a.png", "loopback"),
            ("https://10.1.2.3/a.png", "private"),
            ("https://192.168.0.1/a.png", "private"),
            ("https://169.254.169.254/latest/meta-data", "metadata"),
            ("https://100.64.0.1/", "carrier-grade"),
            ("https://0.0.0.0/", "this host on this network"),
            // The forms the old table let through (issue 13).
            ("https://[::a00:1]/", "IPv4-compatible"),
            ("https://[::ffff:0:a00:1]/", "IPv4-translated"),
            ("https://[2002:a00:1::1]/", "6to4"),
            ("https://[2001::1]/", "Teredo"),
            ("https://[64:ff9b:1::a00:1]/", "local-use NAT64"),
            ("https://[fec0::1]/", "site-local"),
            ("https://[2001:db8::1]/", "documentation"),
            ("https://[::1]/", "loopback"),
            ("https://[fd00:ec2::254]/", "private"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[::ffff:127.0.0.1]/", "loopback"),
            ("https://[64:ff9b::a00:1]/", "private"),
            ("https://localhost/", "local host name"),
            ("https://metadata.google.internal/", "local host name"),
            ("https://intranet/", "local host name"),
        ] {
            let e = check("", url).unwrap_err();
            assert!(
                e.starts_with("inputImage: ") && e.contains(reason),
                "{url}: {e}"
            );
        }
        assert!(check("http://127.0.0.1:8000", "http://127.0.0.1:8000/dog.png").is_ok());
        assert!(check("http://127.0.0.1:8000", "http://127.0.0.1:8001/dog.png").is_err());
    }

    #[test]
    fn other_schemes_and_credentials_are_refused() {
        assert!(
            check("", "file:///etc/passwd")
                .unwrap_err()
                .contains("only http and https")
        );
        assert!(
            check("", "ftp://example.com/a.png")
                .unwrap_err()
                .contains("only http and https")
        );
        assert!(
            check("", "https://u:p@example.com/a.png")
                .unwrap_err()
                .contains("credentials")
        );
    }

    #[test]
    fn allowlist_entries_must_be_origins() {
        assert!(ImageHosts::parse("http://a.example, https://b.example:8443").is_ok());
        assert!(ImageHosts::parse("a.example").is_err());
        assert!(ImageHosts::parse("ftp://a.example").is_err());
    }
}
