//! Outbound HTTP: the `send_request` hook that enforces `allowed_outbound_hosts`
//! (Spin's syntax, parsed and matched by the spin-manifest crate).
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

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

pub use spin_manifest::{AllowedHost, Host, Verdict, well_known_port};

/// The outbound rules of one component: its `allowed_outbound_hosts` plus
/// the origins given with `--allow-outbound`.
pub struct OutboundPolicy {
    component: String,
    allowed: Vec<AllowedHost>,
    tls: Arc<rustls::ClientConfig>,
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
        spin_manifest::verdict(&self.allowed, scheme, host, port)
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
