//! Outbound HTTP: `allowed_outbound_hosts` (Spin's syntax) and the
//! `send_request` hook that enforces it.
//!
//! A request is sent only when an allowed-hosts entry (from spin.toml or
//! `--allow-outbound`) matches its scheme, host and port. On top of that,
//! and unlike Spin's defaults, a destination *address* that is not publicly
//! routable (loopback, private, link-local, CGNAT, cloud metadata, ...) is
//! refused unless the host was named explicitly (a literal host name or IP,
//! or a CIDR range, not a `*` wildcard). The hook resolves the name itself,
//! checks every address, and connects to a checked address, so a DNS answer
//! cannot be swapped between the check and the connection (DNS rebinding).
//! TLS keeps using the host name for SNI and certificate verification.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

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

/// The outbound rules of one component: its `allowed_outbound_hosts` plus
/// the origins given with `--allow-outbound`.
pub struct OutboundPolicy {
    component: String,
    allowed: Vec<AllowedHost>,
    tls: Arc<rustls::ClientConfig>,
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

impl OutboundPolicy {
    pub fn new(
        component: &str,
        allowed: Vec<AllowedHost>,
        tls: Arc<rustls::ClientConfig>,
    ) -> OutboundPolicy {
        OutboundPolicy {
            component: component.to_string(),
            allowed,
            tls,
        }
    }

    /// The TLS client configuration every component shares: webpki roots,
    /// ring, TLS 1.2 and 1.3.
    pub fn default_tls() -> Result<Arc<rustls::ClientConfig>> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }

    pub fn allowed(&self) -> &[AllowedHost] {
        &self.allowed
    }

    /// Check a scheme, host and port against the allowed list.
    pub fn verdict(&self, scheme: &str, host: &Host, port: u16) -> Verdict {
        let mut verdict = Verdict::Denied;
        for entry in &self.allowed {
            if entry.allows_scheme(scheme) && entry.allows_host(host) && entry.allows_port(port) {
                if entry.is_explicit() {
                    return Verdict::Allowed { explicit: true };
                }
                verdict = Verdict::Allowed { explicit: false };
            }
        }
        verdict
    }

    fn deny(&self, scheme: &str, host: &Host, port: u16) -> Error {
        tracing::warn!(
            component = %self.component,
            "outbound request to {scheme}://{host}:{port} refused: not allowed by allowed_outbound_hosts (add it in spin.toml, or pass --allow-outbound {scheme}://{host}:{port})"
        );
        Error::HttpRequestDenied
    }

    fn prohibited(&self, scheme: &str, host: &Host, port: u16, ips: &[IpAddr]) -> Error {
        tracing::warn!(
            component = %self.component,
            addresses = ?ips,
            "outbound request to {scheme}://{host}:{port} refused: {host} is not a public address and is not named explicitly in the allowed hosts (a wildcard entry does not reach private, loopback, link-local or metadata addresses)"
        );
        Error::DestinationIpProhibited
    }

    /// Check, resolve, connect and send one request.
    async fn send(
        self: Arc<Self>,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, IoFuture), Error> {
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let use_tls = match scheme.as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(Error::HttpProtocolError),
        };
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let host = Host::parse(authority.host()).map_err(|_| Error::HttpRequestUriInvalid)?;
        let port = authority
            .port_u16()
            .unwrap_or(if use_tls { 443 } else { 80 });

        let explicit = match self.verdict(&scheme, &host, port) {
            Verdict::Denied => return Err(self.deny(&scheme, &host, port)),
            Verdict::Allowed { explicit } => explicit,
        };

        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(Duration::from_secs(600));
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(Duration::from_secs(600));
        let between_bytes_timeout = options
            .and_then(|o| o.between_bytes_timeout)
            .unwrap_or(Duration::from_secs(600));

        // Resolve here, check every address, connect only to checked ones.
        let addrs: Vec<SocketAddr> = match &host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Host::Domain(name) => {
                match tokio::time::timeout(
                    connect_timeout,
                    tokio::net::lookup_host((name.as_str(), port)),
                )
                .await
                {
                    Err(_) => return Err(Error::DnsTimeout),
                    Ok(Err(e)) => {
                        tracing::warn!(component = %self.component, "DNS lookup of {name} failed: {e}");
                        return Err(Error::DnsError {
                            rcode: Some("address not available".to_string()),
                            info_code: Some(0),
                        });
                    }
                    Ok(Ok(addrs)) => addrs.collect(),
                }
            }
        };
        let checked: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| explicit || address_policy::is_public(a.ip()))
            .collect();
        if checked.is_empty() {
            let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
            if ips.is_empty() {
                return Err(Error::DestinationNotFound);
            }
            return Err(self.prohibited(&scheme, &host, port, &ips));
        }

        let mut last_error = None;
        let mut tcp = None;
        for addr in &checked {
            match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    tcp = Some(stream);
                    break;
                }
                Ok(Err(e)) => last_error = Some(Error::Connect(e)),
                Err(_) => last_error = Some(Error::ConnectionTimeout),
            }
        }
        let Some(tcp) = tcp else {
            return Err(last_error.unwrap_or(Error::ConnectionRefused));
        };
        let _ = tcp.set_nodelay(true);

        let io: Box<dyn Io> = if use_tls {
            let server_name = match &host {
                Host::Domain(d) => rustls::pki_types::ServerName::try_from(d.clone())?,
                Host::Ip(ip) => rustls::pki_types::ServerName::IpAddress((*ip).into()),
            };
            let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
            let tls = tokio::time::timeout(connect_timeout, connector.connect(server_name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };

        let (mut sender, conn) = tokio::time::timeout(
            connect_timeout,
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)??;

        // The request line carries only the path: the scheme and authority
        // were for routing (the Host header is already set).
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        *request.uri_mut() = http::Uri::builder()
            .path_and_query(path)
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;

        // Drive the connection while waiting for the response head.
        let mut conn = Box::pin(conn);
        let mut conn_result = None;
        let send = tokio::time::timeout(first_byte_timeout, sender.send_request(request));
        tokio::pin!(send);
        let response = loop {
            tokio::select! {
                res = &mut send => {
                    break res.map_err(|_| Error::ConnectionReadTimeout)?.map_err(hyper_error)?;
                }
                res = &mut conn, if conn_result.is_none() => {
                    conn_result = Some(res);
                }
            }
        };

        let io_future: IoFuture = match conn_result {
            Some(res) => Box::new(std::future::ready(res.map_err(hyper_error))),
            None => Box::new(async move { conn.await.map_err(hyper_error) }),
        };
        let response =
            response.map(|body| TimeoutBody::new(body, between_bytes_timeout).boxed_unsync());
        Ok((response, io_future))
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

fn hyper_error(e: hyper::Error) -> Error {
    if e.is_timeout() {
        Error::HttpResponseTimeout
    } else {
        Error::Hyper(e)
    }
}

/// Frames ready at once are handed to the guest as one, up to this size.
const MAX_FRAME: usize = 256 * 1024;

/// A response body as the guest reads it: data that has already arrived goes over
/// in one frame (up to MAX_FRAME) rather than in the sizes the socket gave it, often
/// 8 KiB, since every frame is a trip into the guest; and it fails when no frame
/// arrives within the guest's between-bytes timeout.
struct TimeoutBody {
    inner: hyper::body::Incoming,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Data read but not yet handed over; and whatever ended it (an error, the
    /// trailers or the end), to hand over after it.
    pending: Vec<u8>,
    after: Option<Option<Result<Frame<Bytes>, Error>>>,
}

impl TimeoutBody {
    fn new(inner: hyper::body::Incoming, timeout: Duration) -> Self {
        let timeout = timeout.max(Duration::from_nanos(1));
        TimeoutBody {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            pending: Vec::new(),
            after: None,
        }
    }

    fn take_pending(&mut self) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let data = std::mem::take(&mut self.pending);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }
}

impl Body for TimeoutBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(end) = self.after.take() {
            return Poll::Ready(end);
        }
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + self.timeout;
                    self.sleep.as_mut().reset(deadline);
                    match frame.into_data() {
                        Ok(data) if self.pending.is_empty() && data.len() >= MAX_FRAME => {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(data) => {
                            self.pending.extend_from_slice(&data);
                            if self.pending.len() >= MAX_FRAME {
                                return self.take_pending();
                            }
                        }
                        Err(trailers) if self.pending.is_empty() => {
                            return Poll::Ready(Some(Ok(trailers)));
                        }
                        Err(trailers) => {
                            self.after = Some(Some(Ok(trailers)));
                            return self.take_pending();
                        }
                    }
                }
                end @ Poll::Ready(None | Some(Err(_))) => {
                    let end = match end {
                        Poll::Ready(Some(Err(e))) => Some(Err(hyper_error(e))),
                        _ => None,
                    };
                    if self.pending.is_empty() {
                        return Poll::Ready(end);
                    }
                    self.after = Some(end);
                    return self.take_pending();
                }
                // Nothing more has arrived: hand over what has.
                Poll::Pending if !self.pending.is_empty() => return self.take_pending(),
                Poll::Pending => {
                    return match self.sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.after.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let buffered = self.pending.len() as u64;
        hint.set_lower(hint.lower() + buffered);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

/// The `WasiHttpHooks` of one store: every outgoing request goes through
/// [`OutboundPolicy`].
pub struct OutboundHooks {
    policy: Arc<OutboundPolicy>,
}

impl OutboundHooks {
    pub fn new(policy: Arc<OutboundPolicy>) -> Self {
        OutboundHooks { policy }
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_result: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        Box::new(self.policy.clone().send(request, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new(
            "test",
            entries
                .iter()
                .map(|e| AllowedHost::parse(e).unwrap())
                .collect(),
            OutboundPolicy::default_tls().unwrap(),
        )
    }

    fn verdict(p: &OutboundPolicy, url: &str) -> Verdict {
        let uri: http::Uri = url.parse().unwrap();
        let scheme = uri.scheme_str().unwrap();
        let host = Host::parse(uri.host().unwrap()).unwrap();
        let port = uri.port_u16().unwrap_or(well_known_port(scheme).unwrap());
        p.verdict(scheme, &host, port)
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
