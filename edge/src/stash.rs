//! Generated images kept for a day in Spin's key-value store and served by the edge
//! itself: ModelsLab answers with links (`output`), valid 24 hours like their temp
//! links. The expiry is part of the key and the link, so expired images are found
//! from the key list alone, without reading the values.

use crate::api_error::ApiError;

/// The key-value store the component declares in spin.toml (`key_value_stores`).
pub const STORE: &str = "default";
/// Where stored images are served (spin.toml routes `/generations/...` to the edge).
pub const ROUTE_PREFIX: &str = "/generations/";
/// How long a link works.
pub const TTL_SECS: u64 = 24 * 60 * 60;
const KEY_PREFIX: &str = "img/";

/// Images to store before the response goes out, and their links.
#[derive(Debug)]
pub struct Stash {
    origin: String,
    now: u64,
    /// Names given out before the images existed (a job's `future_links`), used first.
    reserved: Vec<String>,
    /// (key, PNG bytes) for the component to write.
    pub pending: Vec<(String, Vec<u8>)>,
}

impl Stash {
    /// `origin`: how clients reach this edge ("https://img.example.com"); `now`: Unix seconds.
    pub fn new(origin: &str, now: u64) -> Stash {
        Stash {
            origin: origin.trim_end_matches('/').to_string(),
            now,
            reserved: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// A stash whose images take these names (from `new_name`), in order.
    pub fn with_names(origin: &str, now: u64, names: &[String]) -> Stash {
        let mut stash = Stash::new(origin, now);
        stash.reserved = names.iter().rev().cloned().collect();
        stash
    }

    /// The link an image stored under `name` is served at.
    pub fn link(&self, name: &str) -> String {
        format!("{}{ROUTE_PREFIX}{name}", self.origin)
    }

    /// Keeps `png` and returns the link that serves it until it expires.
    pub fn put(&mut self, png: Vec<u8>) -> Result<String, ApiError> {
        let name = match self.reserved.pop() {
            Some(name) => name,
            None => new_name(self.now)?,
        };
        self.pending.push((format!("{KEY_PREFIX}{name}"), png));
        Ok(self.link(&name))
    }
}

/// A new image name, expiring TTL_SECS after `now`.
pub fn new_name(now: u64) -> Result<String, ApiError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)
        .map_err(|e| ApiError::internal(format!("no randomness for an image id: {e}")))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{id}.png", now + TTL_SECS))
}

/// The origin links to stored images are built on: `public_url` when set. Without
/// it, the request's own origin (Spin's `spin-full-url`, else its Host header) only
/// when that names this machine (localhost, a loopback address): a Host header is
/// whatever the client wrote, and links built on it could point anywhere.
pub fn links_origin(
    public_url: Option<&str>,
    full_url: Option<&str>,
    host: Option<&str>,
) -> Result<String, ApiError> {
    if let Some(url) = public_url {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let origin = full_url
        .and_then(|u| url::Url::parse(u).ok())
        .map(|u| u.origin().ascii_serialization())
        .or_else(|| host.map(|h| format!("http://{h}")))
        .and_then(|o| url::Url::parse(&o).ok().map(|u| (o, u)));
    if let Some((origin, url)) = origin {
        let local = match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if local {
            return Ok(origin);
        }
    }
    Err(ApiError::internal(
        "the links in this answer need the edge's public_url variable (the origin clients \
         reach it at, e.g. https://img.example.com); without it only a loopback Host is \
         trusted",
    ))
}

/// The store key a `/generations/...` path names, if it is well-formed and not expired.
pub fn key_for_path(path: &str, now: u64) -> Result<String, ApiError> {
    let name = path.strip_prefix(ROUTE_PREFIX).unwrap_or_default();
    let not_found = || ApiError::new(404, format!("no stored image at {path}"));
    let expiry = parse_name(name).ok_or_else(not_found)?;
    if expiry <= now {
        return Err(ApiError::new(
            404,
            format!("{path}: this link expired (links are valid for 24 hours)"),
        ));
    }
    Ok(format!("{KEY_PREFIX}{name}"))
}

/// The keys among `keys` whose images have expired.
pub fn expired(keys: &[String], now: u64) -> impl Iterator<Item = &String> {
    keys.iter().filter(move |k| {
        k.strip_prefix(KEY_PREFIX)
            .and_then(parse_name)
            .is_some_and(|expiry| expiry <= now)
    })
}

/// `<expiry>-<32 hex>.png` → expiry.
fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".png")?;
    let (expiry, id) = stem.split_once('-')?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| expiry.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_map_back_to_keys_until_they_expire() {
        let mut s = Stash::new("http://edge.example:3000/", 1000);
        let url = s.put(vec![1, 2]).unwrap();
        let path = url.strip_prefix("http://edge.example:3000").unwrap();
        assert!(path.starts_with("/generations/87400-"), "{path}");
        let key = key_for_path(path, 1000).unwrap();
        assert_eq!(s.pending[0].0, key);
        assert_eq!(key_for_path(path, 87_400).unwrap_err().status, 404);
        let keys = vec![
            key.clone(),
            "img/5-0123456789abcdef0123456789abcdef.png".into(),
            "other".into(),
        ];
        assert_eq!(expired(&keys, 1000).collect::<Vec<_>>(), vec![&keys[1]]);
    }

    #[test]
    fn links_are_built_on_public_url_or_a_loopback_origin_only() {
        let o = |p, f, h| links_origin(p, f, h);
        assert_eq!(
            o(Some("https://img.example/"), None, Some("evil.example")).unwrap(),
            "https://img.example"
        );
        assert_eq!(
            o(
                None,
                Some("http://127.0.0.1:3000/api/x"),
                Some("evil.example")
            )
            .unwrap(),
            "http://127.0.0.1:3000"
        );
        assert_eq!(
            o(None, None, Some("localhost:3000")).unwrap(),
            "http://localhost:3000"
        );
        assert_eq!(
            o(None, None, Some("[::1]:3000")).unwrap(),
            "http://[::1]:3000"
        );
        for (full, host) in [
            (None, Some("evil.example")),
            (Some("http://evil.example/api"), Some("127.0.0.1")),
            (None, Some("10.0.0.1:80")),
            (None, None),
        ] {
            let e = o(None, full, host).unwrap_err();
            assert!(
                e.status == 500 && e.message.contains("public_url"),
                "{full:?} {host:?}"
            );
        }
    }

    #[test]
    fn malformed_paths_are_404() {
        for p in [
            "/generations/x.png",
            "/generations/1-zz.png",
            "/generations/../img/1-a.png",
            "/other",
        ] {
            assert_eq!(key_for_path(p, 0).unwrap_err().status, 404, "{p}");
        }
    }
}
