//! Opening a connection to the relay: our own TCP stream (TCP_NODELAY),
//! TLS as the configured level asks (Postfix's levels: none, opportunistic
//! and encrypt unverified, verify against the web roots and `relay_ca_file`),
//! EHLO with a name a strict relay accepts, then AUTH.
//!
//! A failure says which it was: the relay unreachable, TLS failed, or our
//! credentials refused; the last two are configuration, not bad luck, and
//! cost no message an attempt (see `relay`).

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
// lettre 0.11 marks its network stream deprecated ("not meant to be made
// public") but it is the one way to run its TLS handshake over a socket we
// opened with TCP_NODELAY; 0.12 will need tokio-rustls here instead.
#[allow(deprecated)]
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, Identity, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;

use crate::config::{RelayConfig, RelayTls, RelayUrl};

/// Why a connection could not be had.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectError {
    /// TCP, the greeting or a timeout: the relay is down or unreachable.
    Unreachable(String),
    /// The TLS handshake, or TLS required and not offered.
    Tls(String),
    /// The relay refused our credentials (530, 535, ...).
    Auth(String),
}

impl ConnectError {
    /// The relay's state this makes: "unreachable", "tls failed", "auth failed".
    pub fn state(&self) -> &'static str {
        match self {
            ConnectError::Unreachable(_) => "unreachable",
            ConnectError::Tls(_) => "tls failed",
            ConnectError::Auth(_) => "auth failed",
        }
    }

    pub fn text(&self) -> &str {
        match self {
            ConnectError::Unreachable(t) | ConnectError::Tls(t) | ConnectError::Auth(t) => t,
        }
    }
}

/// How to reach one relay.
pub struct Connector {
    pub url: RelayUrl,
    pub tls: RelayTls,
    params: TlsParameters,
    credentials: Option<Credentials>,
    /// XOAUTH2: the user and the file its current token is read from.
    oauth2: Option<(String, std::path::PathBuf)>,
    helo: Option<String>,
    timeout: Duration,
}

impl Connector {
    /// From a (validated) relay; Err when a TLS file cannot be used.
    pub fn new(relay: &RelayConfig, timeout: Duration) -> Result<Connector, String> {
        let url = relay.parsed_url();
        let tls = relay.effective_tls();
        let mut b = TlsParameters::builder(url.host.clone());
        if let Some(file) = &relay.ca_file {
            let pem = std::fs::read(file).map_err(|e| format!("ca_file: {e}"))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| format!("ca_file: {e}"))?;
            b = b.add_root_certificate(cert);
        }
        if let (Some(c), Some(k)) = (&relay.client_cert_file, &relay.client_key_file) {
            let (c, k) = (
                std::fs::read(c).map_err(|e| format!("client_cert_file: {e}"))?,
                std::fs::read(k).map_err(|e| format!("client_key_file: {e}"))?,
            );
            let id = Identity::from_pem(&c, &k).map_err(|e| format!("client_cert_file: {e}"))?;
            b = b.identify_with(id);
        }
        if tls != RelayTls::Verify {
            // Postfix's `may` and `encrypt`: encrypted, whoever answers.
            b = b
                .dangerous_accept_invalid_certs(true)
                .dangerous_accept_invalid_hostnames(true);
        }
        let params = b.build_rustls().map_err(|e| format!("relay TLS: {e}"))?;
        let credentials = match (&relay.user, &relay.password) {
            (Some(u), Some(p)) => Some(Credentials::new(u.clone(), p.expose().to_string())),
            _ => None,
        };
        let helo = relay.helo_name.clone().or_else(fqdn);
        let oauth2 = match (&relay.user, &relay.oauth2_token_file) {
            (Some(u), Some(f)) => Some((u.clone(), f.clone())),
            _ => None,
        };
        Ok(Connector {
            url,
            tls,
            params,
            credentials,
            oauth2,
            helo,
            timeout,
        })
    }

    /// `smtps://host:port (tls verify, helo mail.example.com)`.
    pub fn describe(&self) -> String {
        let scheme = if self.url.implicit_tls {
            "smtps"
        } else {
            "smtp"
        };
        let helo = self.helo.as_deref().unwrap_or("the connection's address");
        format!(
            "{scheme}://{}:{} (tls {}, helo {helo}{})",
            self.url.host,
            self.url.port,
            self.tls.name(),
            match (&self.credentials, &self.oauth2) {
                (Some(_), _) => ", auth",
                (_, Some(_)) => ", auth xoauth2",
                _ => "",
            }
        )
    }

    /// A connection ready for MAIL FROM, within the SMTP timeout.
    pub async fn connect(&self) -> Result<AsyncSmtpConnection, ConnectError> {
        let (host, port) = (self.url.host.as_str(), self.url.port);
        let connect = async {
            let stream = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| {
                    ConnectError::Unreachable(format!("connecting to {host}:{port}: {e}"))
                })?;
            // Without it every message waits for a delayed ACK (lettre
            // writes the body and the final `.` separately).
            stream
                .set_nodelay(true)
                .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
            let hello = self.hello(stream.local_addr().ok().map(|a| a.ip()));
            let greeting = |e: lettre::transport::smtp::Error| {
                ConnectError::Unreachable(format!("greeting from {host}: {}", error_text(&e)))
            };
            let mut conn = if self.url.implicit_tls {
                // smtps://: TLS from the first byte, over our own socket.
                #[allow(deprecated)] // the way lettre offers to wrap a stream it did not open
                let mut tls = AsyncNetworkStream::use_existing_tokio1(Box::new(stream));
                tls.upgrade_tls(self.params.clone()).await.map_err(|e| {
                    ConnectError::Tls(format!("TLS with {host}:{port}: {}", error_text(&e)))
                })?;
                AsyncSmtpConnection::connect_with_transport(Box::new(Upgraded(tls)), &hello)
                    .await
                    .map_err(greeting)?
            } else {
                let mut conn =
                    AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello)
                        .await
                        .map_err(greeting)?;
                let want_tls = match self.tls {
                    RelayTls::None => false,
                    RelayTls::Opportunistic => conn.can_starttls(),
                    RelayTls::Encrypt | RelayTls::Verify => true,
                };
                if want_tls {
                    if !conn.can_starttls() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), conn.abort()).await;
                        return Err(ConnectError::Tls(format!(
                            "relay {host} does not offer STARTTLS and relay_tls = {}",
                            self.tls.name()
                        )));
                    }
                    conn.starttls(self.params.clone(), &hello)
                        .await
                        .map_err(|e| {
                            ConnectError::Tls(format!("STARTTLS with {host}: {}", error_text(&e)))
                        })?;
                }
                conn
            };
            let oauth2 = match &self.oauth2 {
                Some((user, file)) => {
                    let token = std::fs::read_to_string(file).map_err(|e| {
                        ConnectError::Auth(format!(
                            "reading relay_oauth2_token_file {}: {e}",
                            file.display()
                        ))
                    })?;
                    Some(Credentials::new(user.clone(), token.trim().to_string()))
                }
                None => None,
            };
            let auth = match (&self.credentials, &oauth2) {
                (Some(c), _) => Some((c, &[Mechanism::Plain, Mechanism::Login][..])),
                (None, Some(c)) => Some((c, &[Mechanism::Xoauth2][..])),
                _ => None,
            };
            if let Some((creds, mechanisms)) = auth {
                conn.auth(mechanisms, creds).await.map_err(|e| {
                    let text = format!("authentication with {host}: {}", error_text(&e));
                    match e.status() {
                        // 4xx during AUTH (454 temporary failure) is the relay's trouble.
                        Some(c) if u16::from(c) < 500 => ConnectError::Unreachable(text),
                        _ => ConnectError::Auth(text),
                    }
                })?;
            }
            Ok(conn)
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(ConnectError::Unreachable(format!(
                    "timed out after {:?} connecting",
                    self.timeout
                )))
            })
    }

    /// The configured or fully qualified name; else the address literal of
    /// our end of the connection (RFC 5321 section 4.1.4), never a bare
    /// single-label host name a strict relay refuses.
    fn hello(&self, local: Option<IpAddr>) -> ClientId {
        match (&self.helo, local) {
            (Some(name), _) => ClientId::Domain(name.clone()),
            (None, Some(IpAddr::V4(a))) => ClientId::Ipv4(a),
            (None, Some(IpAddr::V6(a))) => ClientId::Ipv6(a),
            (None, None) => ClientId::default(),
        }
    }
}

/// lettre's stream after its TLS handshake, as the tokio stream its
/// connection is built on: implicit TLS over a socket we opened.
#[derive(Debug)]
#[allow(deprecated)]
struct Upgraded(AsyncNetworkStream);

impl tokio::io::AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match futures_io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        futures_io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures_io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures_io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

impl AsyncTokioStream for Upgraded {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.peer_addr()
    }
}

/// The machine's fully qualified name: the host name if it has a dot,
/// else the canonical name the resolver gives for it.
pub fn fqdn() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates
    // within it on success (we NUL-terminate the last byte regardless).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return None;
    }
    let host = std::ffi::CStr::from_bytes_until_nul(&buf)
        .ok()?
        .to_str()
        .ok()?
        .to_string();
    if host.contains('.') {
        return Some(host);
    }
    canonical_name(&host).filter(|c| c.contains('.') && !c.starts_with("localhost"))
}

fn canonical_name(host: &str) -> Option<String> {
    let c_host = std::ffi::CString::new(host).ok()?;
    // SAFETY: zeroed addrinfo is a valid hints value; getaddrinfo writes a
    // list we free with freeaddrinfo, reading only ai_canonname before.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_flags = libc::AI_CANONNAME;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        if libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut res) != 0
            || res.is_null()
        {
            return None;
        }
        let name = (*res).ai_canonname;
        let out = (!name.is_null()).then(|| {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        });
        libc::freeaddrinfo(res);
        out
    }
}

/// A lettre error as one line: the relay's reply (`535 5.7.8 ...`) when
/// it gave one, else what failed, without lettre's kind prefix repeated.
pub fn error_text(e: &lettre::transport::smtp::Error) -> String {
    let source = std::error::Error::source(e).map(|s| s.to_string());
    match (e.status(), source) {
        (Some(code), Some(text)) => format!("{code} {}", text.trim()),
        (Some(code), None) => format!("{code}"),
        (None, Some(text)) if e.is_tls() => format!("TLS: {text}"),
        // lettre's io errors repeat the kind: "Connection error: ...".
        (None, Some(text)) => text
            .strip_prefix("Connection error: ")
            .unwrap_or(&text)
            .to_string(),
        (None, None) => e.to_string(),
    }
}
