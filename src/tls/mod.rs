//! gRPC over TLS (rustls, ring provider) with a certificate and key read from
//! files, reloadable at run time (SIGHUP), and optional mutual TLS.
//!
//! [`ReloadableTls`] holds the current [`rustls::ServerConfig`]. Each accepted
//! connection takes the config that is current when it is accepted, so
//! [`ReloadableTls::reload`] changes what new handshakes use while existing
//! connections (and the queue behind them) carry on untouched.
//!
//! [`ReloadableTls::incoming`] turns a [`TcpListener`] into the stream of
//! completed TLS connections that
//! `tonic::transport::Server::serve_with_incoming_shutdown` takes. The streams
//! are [`tokio_rustls::server::TlsStream`]s, for which tonic (feature
//! `tls-ring`) records the client certificates, so a handler reads them with
//! `request.peer_certs()` and names the client with [`peer_subject`].
//!
//! Wiring: `server::Server::start` loads a `ReloadableTls`, reloads it on
//! SIGHUP (`ServerHandle::reload_tls`; a failed reload keeps serving the
//! previous certificate) and serves `incoming_with_timeout(listener,
//! grpc_handshake_timeout_ms)`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;

/// After `accept` fails (typically out of file descriptors), wait this long
/// before accepting again instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where the server's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate first, then any intermediate CA
    /// certificates.
    pub cert_file: PathBuf,
    /// PEM: the private key of the certificate, PKCS#8 (`BEGIN PRIVATE KEY`),
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`).
    pub key_file: PathBuf,
    /// PEM: the CA certificates that sign client certificates. When set,
    /// a client may present a certificate, which must be signed by one of
    /// them (mTLS); clients without one are served (they need a token);
    /// when `None`, clients are not asked for a certificate.
    pub client_ca_file: Option<PathBuf>,
}

/// Why the TLS files could not be used. Each message names the file and
/// what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read at all.
    #[error("cannot read TLS {what} file {}: {source}; check the path and that mailspool may read it", path.display())]
    Read {
        /// "certificate", "key" or "client CA".
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("TLS {what} file {} is not valid PEM ({reason}); it must hold PEM blocks such as '-----BEGIN CERTIFICATE-----'", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The certificate or client CA file holds no certificate.
    #[error("TLS {what} file {} holds no certificate; it must hold at least one PEM '-----BEGIN CERTIFICATE-----' block", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    /// The key file holds no private key.
    #[error("TLS key file {} holds no private key; it must hold a PEM '-----BEGIN PRIVATE KEY-----' (PKCS#8), '-----BEGIN RSA PRIVATE KEY-----' (PKCS#1) or '-----BEGIN EC PRIVATE KEY-----' (SEC1) block", path.display())]
    NoPrivateKey { path: PathBuf },
    /// The certificate and the key do not make a usable pair.
    #[error("TLS certificate file {} and key file {} cannot be used together ({source}); check that the key is the private key of the first certificate in the certificate file and that its type is RSA, ECDSA P-256/P-384 or Ed25519", cert_path.display(), key_path.display())]
    CertKey {
        cert_path: PathBuf,
        key_path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// A certificate of the client CA file cannot be a trust anchor.
    #[error("TLS client CA file {}: certificate #{index} cannot be used as a trust anchor ({reason}); the file must hold the PEM certificates of the CAs that sign client certificates", path.display())]
    ClientCa {
        path: PathBuf,
        /// 1-based position of the certificate in the file.
        index: usize,
        reason: String,
    },
    /// rustls refused a setting that does not depend on the files.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// The client side: TLS towards a mailspool server, verified with the given
/// PEM CA certificate(s), or with the public web roots when none is given.
pub fn client_config(ca_pem: Option<Vec<u8>>) -> tonic::transport::ClientTlsConfig {
    let tls = tonic::transport::ClientTlsConfig::new();
    match ca_pem {
        Some(pem) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        None => tls.with_webpki_roots(),
    }
}

/// Holds the current rustls `ServerConfig`; [`reload`](Self::reload) swaps
/// it atomically. Clones share the same config.
#[derive(Clone)]
pub struct ReloadableTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTls")
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

impl ReloadableTls {
    /// Reads the files and builds the first config.
    pub fn load(files: TlsFiles) -> Result<ReloadableTls, TlsError> {
        let config = build_config(&files)?;
        Ok(ReloadableTls {
            inner: Arc::new(Inner {
                files,
                current: RwLock::new(config),
            }),
        })
    }

    /// Re-reads the files; on error keeps serving with the old config and
    /// returns the error. Connections already open are not affected either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build_config(&self.inner.files)?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        Ok(())
    }

    /// The config that new handshakes use now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Accepts TCP connections from `listener` and yields completed TLS
    /// streams, for `tonic::transport::Server::serve_with_incoming_shutdown`.
    ///
    /// Handshakes run concurrently, each in its own task, so a slow or
    /// stalled client does not hold up others; a handshake that has not
    /// completed after `timeout` (`grpc_handshake_timeout_ms`) is abandoned
    /// and its connection closed. Failed handshakes are logged at debug (peer
    /// address and reason) and skipped. `TCP_NODELAY` is set on each socket.
    /// Dropping the stream closes the listener and aborts the handshakes in
    /// progress. An `accept` error is logged at warn, yielded, and followed by
    /// a short pause before the next `accept`.
    pub fn incoming_with_timeout(
        &self,
        listener: TcpListener,
        timeout: Duration,
    ) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> + Send + Unpin + 'static {
        self.tls_incoming(listener, timeout)
    }

    /// As [`incoming_with_timeout`](Self::incoming_with_timeout), for the
    /// HTTP/1.1 listener (the console and `/metrics`): the same certificate,
    /// key and client CAs, but ALPN offers `http/1.1` instead of `h2`.
    pub fn incoming_http1(
        &self,
        listener: TcpListener,
        timeout: Duration,
    ) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> + Send + Unpin + 'static {
        let mut incoming = self.tls_incoming(listener, timeout);
        incoming.alpn = Some(vec![b"http/1.1".to_vec()]);
        incoming
    }

    fn tls_incoming(&self, listener: TcpListener, timeout: Duration) -> TlsIncoming {
        TlsIncoming {
            listener,
            tls: self.clone(),
            timeout,
            alpn: None,
            handshakes: JoinSet::new(),
            backoff: None,
        }
    }
}

/// The stream behind [`ReloadableTls::incoming`].
struct TlsIncoming {
    listener: TcpListener,
    tls: ReloadableTls,
    timeout: Duration,
    /// ALPN protocols instead of the config's (`h2`).
    alpn: Option<Vec<Vec<u8>>>,
    handshakes: JoinSet<Option<TlsStream<TcpStream>>>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TlsIncoming {
    fn start_handshake(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let mut config = self.tls.server_config();
        if let Some(alpn) = &self.alpn {
            let mut own = (*config).clone();
            own.alpn_protocols = alpn.clone();
            config = Arc::new(own);
        }
        let acceptor = TlsAcceptor::from(config);
        let timeout = self.timeout;
        self.handshakes.spawn(async move {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, reason = %e, "TlsHandshakeFailed");
                    None
                }
                Err(_) => {
                    let reason = format!("no handshake within {timeout:?}");
                    tracing::debug!(%peer, %reason, "TlsHandshakeFailed");
                    None
                }
            }
        });
    }
}

impl Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // Completed handshakes first. `Ready(None)` means none is in
            // progress; starting one below re-polls the set, which then
            // registers the waker.
            while let Poll::Ready(Some(joined)) = this.handshakes.poll_join_next(cx) {
                match joined {
                    Ok(Some(stream)) => return Poll::Ready(Some(Ok(stream))),
                    Ok(None) => {}
                    Err(e) if e.is_panic() => {
                        tracing::error!(error = %e, "TlsHandshakePanicked");
                    }
                    Err(_) => {}
                }
            }
            if let Some(sleep) = this.backoff.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.backoff = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, peer))) => this.start_handshake(tcp, peer),
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "TcpAcceptFailed");
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn build_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs("certificate", &files.cert_file)?;
    let key = read_key(&files.key_file)?;
    warn_if_not_valid_now(&files.cert_file, &certs[0]);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for (i, ca) in read_certs("client CA", ca_path)?.into_iter().enumerate() {
                roots.add(ca).map_err(|e| TlsError::ClientCa {
                    path: ca_path.clone(),
                    index: i + 1,
                    reason: e.to_string(),
                })?;
            }
            // A certificate is optional (token callers, probes), but one that
            // is presented must chain to these CAs.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| {
                    TlsError::Setup(format!(
                        "client certificate verifier from {}: {e}",
                        ca_path.display()
                    ))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::CertKey {
            cert_path: files.cert_file.clone(),
            key_path: files.key_file.clone(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        },
        e => TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        e => pem_error("key", path, e),
    })
}

/// An expired (or not yet valid) server certificate is still loaded, since
/// refusing to start helps no one, but it is worth a warning.
fn warn_if_not_valid_now(path: &Path, cert: &CertificateDer<'_>) {
    if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) {
        let validity = parsed.validity();
        if !validity.is_valid() {
            tracing::warn!(
                file = %path.display(),
                not_before = %validity.not_before,
                not_after = %validity.not_after,
                "the TLS server certificate is not valid now; clients will refuse it"
            );
        }
    }
}

/// The subject DN of the first (leaf) certificate, as an RFC 4514 string:
/// most specific RDN first, `,` between RDNs, `+` inside a multi-valued RDN,
/// no spaces, special characters escaped, e.g. `CN=billing.internal,O=Example`
/// for a certificate made with `openssl req -subj "/O=Example/CN=billing.internal"`.
///
/// Attribute types CN, L, ST, O, OU, C, STREET, DC and UID are written by
/// name with their string value; any other type is written as its dotted OID
/// with `#` and the hex of the value's DER encoding (as RFC 4514 and Go's
/// `pkix.Name.String` do), e.g. `1.2.840.113549.1.9.1=#16...` for an
/// emailAddress.
///
/// Use it with tonic's `Request::peer_certs()`:
/// `request.peer_certs().and_then(|certs| peer_subject(&certs))`.
/// `None` when there is no certificate or it cannot be parsed.
pub fn peer_subject(certs: &[CertificateDer<'_>]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    let rdns: Vec<_> = cert.subject().iter_rdn().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            write_attribute(&mut out, attr)?;
        }
    }
    Some(out)
}

fn write_attribute(
    out: &mut String,
    attr: &x509_parser::x509::AttributeTypeAndValue<'_>,
) -> Option<()> {
    use x509_parser::asn1_rs::{Tag, ToDer};
    let oid = attr.attr_type().to_id_string();
    let name = match oid.as_str() {
        "2.5.4.3" => Some("CN"),
        "2.5.4.7" => Some("L"),
        "2.5.4.8" => Some("ST"),
        "2.5.4.10" => Some("O"),
        "2.5.4.11" => Some("OU"),
        "2.5.4.6" => Some("C"),
        "2.5.4.9" => Some("STREET"),
        "0.9.2342.19200300.100.1.25" => Some("DC"),
        "0.9.2342.19200300.100.1.1" => Some("UID"),
        _ => None,
    };
    let value = attr.attr_value();
    let text = match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString
        | Tag::T61String => std::str::from_utf8(value.data).ok().map(str::to_owned),
        Tag::BmpString => {
            let units: Vec<u16> = value
                .data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    };
    match (name, text) {
        (Some(name), Some(text)) => {
            out.push_str(name);
            out.push('=');
            escape_rfc4514(out, &text);
        }
        _ => {
            out.push_str(name.unwrap_or(&oid));
            out.push_str("=#");
            for b in value.to_der_vec().ok()? {
                out.push_str(&format!("{b:02x}"));
            }
        }
    }
    Some(())
}

/// RFC 4514 section 2.4 escaping of an attribute value.
fn escape_rfc4514(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests;
