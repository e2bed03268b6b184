//! The TLS listener's tests: real handshakes over loopback.

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

/// A CA that signs test certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, PKCS#8 key PEM)
    fn sign(
        &self,
        dn: &[(DnType, &str)],
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = DistinguishedName::new();
        for (ty, value) in dn {
            params.distinguished_name.push(ty.clone(), *value);
        }
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server(&self) -> (String, String) {
        self.sign(
            &[(DnType::CommonName, "localhost")],
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, dn: &[(DnType, &str)]) -> (String, String) {
        self.sign(dn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A directory with server.crt, server.key and (optionally) client-ca.crt.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(server: &(String, String), client_ca: Option<&Ca>) -> Files {
        let files = Files {
            dir: tempfile::tempdir().unwrap(),
        };
        files.write_server(server);
        if let Some(ca) = client_ca {
            std::fs::write(files.dir.path().join("client-ca.crt"), ca.pem()).unwrap();
        }
        files
    }

    fn write_server(&self, (cert, key): &(String, String)) {
        std::fs::write(self.cert(), cert).unwrap();
        std::fs::write(self.key(), key).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    fn tls_files(&self) -> TlsFiles {
        let ca = self.dir.path().join("client-ca.crt");
        TlsFiles {
            cert_file: self.cert(),
            key_file: self.key(),
            client_ca_file: ca.exists().then_some(ca),
        }
    }
}

/// A health service whose `Check` answers with the caller's subject in
/// the `x-peer-subject` response header, as read by a handler.
struct Probe;

#[tonic::async_trait]
impl Health for Probe {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let subject = request.peer_certs().and_then(|certs| peer_subject(&certs));
        let mut response = tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        });
        if let Some(subject) = subject {
            response
                .metadata_mut()
                .insert("x-peer-subject", subject.parse().unwrap());
        }
        Ok(response)
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

struct TestServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(tls: &ReloadableTls) -> TestServer {
        // The default of grpc_handshake_timeout_ms.
        TestServer::start_with_timeout(tls, Duration::from_secs(10)).await
    }

    async fn start_with_timeout(tls: &ReloadableTls, timeout: Duration) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tls.incoming_with_timeout(listener, timeout);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::new(Probe))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        TestServer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// Opens a TLS connection trusting only `ca_pem`, presenting `identity`.
async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Calls `Check`; the subject the handler saw.
async fn check(channel: Channel) -> Result<Option<String>, String> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(response.get_ref().status, ServingStatus::Serving as i32);
    Ok(response
        .metadata()
        .get("x-peer-subject")
        .map(|v| v.to_str().unwrap().to_owned()))
}

async fn call(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Option<String>, String> {
    check(connect(addr, ca_pem, identity).await?).await
}

#[tokio::test]
async fn tls_serves_grpc_to_a_client_trusting_the_ca() {
    let ca = Ca::new("Test CA");
    let files = Files::new(&ca.server(), None);
    let tls = ReloadableTls::load(files.tls_files()).unwrap();
    assert_eq!(tls.server_config().alpn_protocols, vec![b"h2".to_vec()]);
    let server = TestServer::start(&tls).await;

    assert_eq!(call(server.addr, &ca.pem(), None).await, Ok(None));
    // Twice, on separate connections.
    assert_eq!(call(server.addr, &ca.pem(), None).await, Ok(None));
    // A client presenting a certificate is fine without client auth,
    // and the server does not ask for it.
    let client = ca.client(&[(DnType::CommonName, "someone")]);
    assert_eq!(call(server.addr, &ca.pem(), Some(&client)).await, Ok(None));
    // A client trusting another CA refuses the server.
    let other = Ca::new("Other CA");
    assert!(call(server.addr, &other.pem(), None).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn tls_a_stalled_handshake_blocks_no_one_and_times_out() {
    use tokio::io::AsyncReadExt;
    let ca = Ca::new("Test CA");
    let files = Files::new(&ca.server(), None);
    let tls = ReloadableTls::load(files.tls_files()).unwrap();
    let server = TestServer::start_with_timeout(&tls, Duration::from_secs(2)).await;

    // Connects and never says a word.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    // Sends half a ClientHello record header and stops.
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, &[0x16, 0x03])
        .await
        .unwrap();

    let started = std::time::Instant::now();
    assert_eq!(call(server.addr, &ca.pem(), None).await, Ok(None));
    assert!(started.elapsed() < Duration::from_millis(1500));

    // The server gives up on both and closes them.
    for stream in [&mut stalled, &mut half] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("closed by the handshake timeout")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert_eq!(call(server.addr, &ca.pem(), None).await, Ok(None));
    server.stop().await;
}

#[tokio::test]
async fn tls_reload_swaps_the_certificate_and_keeps_open_connections() {
    let first = Ca::new("First CA");
    let second = Ca::new("Second CA");
    let files = Files::new(&first.server(), None);
    let tls = ReloadableTls::load(files.tls_files()).unwrap();
    let server = TestServer::start(&tls).await;

    let open = connect(server.addr, &first.pem(), None).await.unwrap();
    assert_eq!(check(open.clone()).await, Ok(None));
    assert!(call(server.addr, &second.pem(), None).await.is_err());

    files.write_server(&second.server());
    tls.reload().unwrap();

    assert_eq!(call(server.addr, &second.pem(), None).await, Ok(None));
    assert!(call(server.addr, &first.pem(), None).await.is_err());
    // The connection opened before the reload still works: a new one
    // trusting only the first CA would be refused, so this is the old one.
    assert_eq!(check(open.clone()).await, Ok(None));

    // A broken key file: the reload fails, naming the file, and the
    // server goes on with the second CA's certificate.
    std::fs::write(files.key(), "not a key\n").unwrap();
    let err = tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&files.key().display().to_string()),
        "{err}"
    );
    // A key of another certificate: refused too.
    std::fs::write(files.key(), first.server().1).unwrap();
    let err = tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::CertKey { .. }), "{err:?}");

    assert_eq!(call(server.addr, &second.pem(), None).await, Ok(None));
    assert!(call(server.addr, &first.pem(), None).await.is_err());
    assert_eq!(check(open).await, Ok(None));
    server.stop().await;
}

#[tokio::test]
async fn tls_mutual_auth_verifies_and_exposes_the_client_certificate() {
    let ca = Ca::new("Test CA");
    let unknown = Ca::new("Unknown CA");
    let files = Files::new(&ca.server(), Some(&ca));
    let tls = ReloadableTls::load(files.tls_files()).unwrap();
    let server = TestServer::start(&tls).await;

    let billing = ca.client(&[
        (DnType::OrganizationName, "Example"),
        (DnType::CommonName, "billing.internal"),
    ]);
    assert_eq!(
        call(server.addr, &ca.pem(), Some(&billing)).await,
        Ok(Some("CN=billing.internal,O=Example".to_owned()))
    );
    let plain = ca.client(&[(DnType::CommonName, "reports")]);
    assert_eq!(
        call(server.addr, &ca.pem(), Some(&plain)).await,
        Ok(Some("CN=reports".to_owned()))
    );
    // No certificate: served, with no subject (it needs a token then).
    assert_eq!(call(server.addr, &ca.pem(), None).await, Ok(None));
    // One from a CA the server does not trust: refused.
    let stranger = unknown.client(&[(DnType::CommonName, "billing.internal")]);
    assert!(call(server.addr, &ca.pem(), Some(&stranger)).await.is_err());
    // Still serving the good ones.
    assert_eq!(
        call(server.addr, &ca.pem(), Some(&plain)).await,
        Ok(Some("CN=reports".to_owned()))
    );
    server.stop().await;
}

#[test]
fn tls_peer_subject_formats_rfc4514() {
    let ca = Ca::new("Test CA");
    let subject = |dn: &[(DnType, &str)]| {
        let (pem, _) = ca.client(dn);
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        peer_subject(&[der])
    };
    assert_eq!(
        subject(&[
            (DnType::CountryName, "DE"),
            (DnType::OrganizationName, "Example"),
            (DnType::OrganizationalUnitName, "Ops"),
            (DnType::CommonName, "billing.internal"),
        ]),
        Some("CN=billing.internal,OU=Ops,O=Example,C=DE".to_owned())
    );
    assert_eq!(
        subject(&[(DnType::CommonName, "Doe, John+\"x\" <y>; \\")]),
        Some(r#"CN=Doe\, John\+\"x\" \<y\>\; \\"#.to_owned())
    );
    assert_eq!(
        subject(&[(DnType::CommonName, "#lead and trail ")]),
        Some(r"CN=\#lead and trail\ ".to_owned())
    );
    assert_eq!(
        subject(&[
            (DnType::CustomDnType(vec![1, 2, 3, 4]), "x"),
            (DnType::CommonName, "c"),
        ]),
        // UTF8String "x": tag 0c, length 01, 78.
        Some("CN=c,1.2.3.4=#0c0178".to_owned())
    );
    assert_eq!(subject(&[]), Some(String::new()));
    assert_eq!(peer_subject(&[]), None);
    assert_eq!(peer_subject(&[CertificateDer::from(vec![1, 2, 3])]), None);
}

#[test]
fn tls_load_reports_bad_files_by_name() {
    let ca = Ca::new("Test CA");
    let server = ca.server();
    let files = Files::new(&server, None);

    let missing = TlsFiles {
        cert_file: files.dir.path().join("nope.crt"),
        ..files.tls_files()
    };
    let err = ReloadableTls::load(missing).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Read {
                what: "certificate",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("nope.crt"), "{err}");

    // The key where the certificate should be.
    let swapped = TlsFiles {
        cert_file: files.key(),
        key_file: files.cert(),
        client_ca_file: None,
    };
    let err = ReloadableTls::load(swapped).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");

    let broken = files.dir.path().join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    let err = ReloadableTls::load(TlsFiles {
        cert_file: broken.clone(),
        ..files.tls_files()
    })
    .unwrap_err();
    assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");

    let err = ReloadableTls::load(TlsFiles {
        client_ca_file: Some(files.key()),
        ..files.tls_files()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::NoCertificate {
                what: "client CA",
                ..
            }
        ),
        "{err:?}"
    );
    let err = ReloadableTls::load(TlsFiles {
        client_ca_file: Some(files.dir.path().join("no-ca.crt")),
        ..files.tls_files()
    })
    .unwrap_err();
    assert!(err.to_string().contains("no-ca.crt"), "{err}");
}

#[test]
fn tls_load_accepts_a_sec1_ec_key() {
    use x509_parser::der_parser::parse_der;
    let ca = Ca::new("Test CA");
    let (cert, pkcs8_pem) = ca.server();
    // PKCS#8 is SEQUENCE { version, algorithm, OCTET STRING { ECPrivateKey } };
    // the inner ECPrivateKey is the SEC1 encoding.
    let pkcs8 =
        rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pkcs8_pem.as_bytes()).unwrap();
    let (_, outer) = parse_der(pkcs8.secret_pkcs8_der()).unwrap();
    let sec1 = outer.as_sequence().unwrap()[2].as_slice().unwrap().to_vec();
    let sec1_pem = pem_block("EC PRIVATE KEY", &sec1);

    let files = Files::new(&(cert, sec1_pem), None);
    let tls = ReloadableTls::load(files.tls_files()).unwrap();
    assert_eq!(tls.server_config().alpn_protocols, vec![b"h2".to_vec()]);
}

fn pem_block(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | ((*b as u32) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
