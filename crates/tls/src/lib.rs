//! rustls glue for SPIFFE mutual TLS between ironpact agents and servers.
//!
//! Trust anchors change as the CA rotates, so verifiers read them from a [`TrustSource`] at
//! every handshake instead of being built once; a [`SvidCell`] holds the certificate this side
//! presents and can be swapped while connections are open. Chain checking itself is
//! `ironpact_spiffe::x509::verify_svid_chain`; here is only what rustls needs around it.

/// The handshake-signature checks of a verifier with a `provider: Arc<CryptoProvider>` field:
/// the provider's algorithms, as every verifier here uses them.
macro_rules! provider_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

pub mod claims;
pub mod health;
pub mod metrics;
pub mod shutdown;
pub mod uds;

use ironpact_spiffe::SpiffeId;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, SignatureScheme};
use std::fmt;
use std::sync::{Arc, RwLock};

/// The current X.509 trust anchors (DER CA certificates) of a trust domain.
pub trait TrustSource: Send + Sync + 'static {
    fn x509_roots(&self) -> Vec<Vec<u8>>;

    /// The roots of one trust domain only (a source holding several, e.g. federated ones,
    /// answers with that domain's bundle, so that no domain's CA vouches for another's IDs).
    fn x509_roots_for(&self, _td: &ironpact_spiffe::TrustDomain) -> Vec<Vec<u8>> {
        self.x509_roots()
    }
}

/// A trust source that is a plain shared list, updated by its owner.
#[derive(Default)]
pub struct SharedRoots(RwLock<Vec<Vec<u8>>>);

impl SharedRoots {
    pub fn new(roots: Vec<Vec<u8>>) -> Self {
        Self(RwLock::new(roots))
    }
    pub fn set(&self, roots: Vec<Vec<u8>>) {
        if let Ok(mut g) = self.0.write() {
            *g = roots;
        }
    }
}

impl TrustSource for SharedRoots {
    fn x509_roots(&self) -> Vec<Vec<u8>> {
        self.0.read().map(|g| g.clone()).unwrap_or_default()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls's time, or the shifted test clock of a debug build started with one (see
/// `ironpact_spiffe::clock::process_clock`), so that peers on one shifted clock agree.
fn now_secs(now: UnixTime) -> i64 {
    if ironpact_spiffe::clock::is_test_clock() {
        return ironpact_spiffe::clock::process_clock().now();
    }
    now.as_secs() as i64
}

fn verify(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &dyn TrustSource,
    now: UnixTime,
) -> Result<SpiffeId, rustls::Error> {
    let mut chain: Vec<&[u8]> = vec![end_entity.as_ref()];
    chain.extend(intermediates.iter().map(|c| c.as_ref()));
    ironpact_spiffe::x509::verify_svid_chain(&chain, &roots.x509_roots(), now_secs(now)).map_err(
        |e| {
            tracing::debug!(error = %e, "peer SVID rejected");
            rejected(e.to_string())
        },
    )
}

#[derive(Debug)]
struct PeerRejected(String);

impl fmt::Display for PeerRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerRejected {}

/// The TLS failure in `err`'s chain of sources, in words: rustls prints a certificate that our
/// checks refused as a debug structure (`Other(OtherError(PeerRejected(…)))`); this gives
/// the reason instead. `None` when no TLS error is in the chain.
pub fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        // io::Error's source() skips the error it wraps: look inside it too
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(t) = tls {
            return Some(match t {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
                    match o.0.downcast_ref::<PeerRejected>() {
                        Some(p) => format!("the peer's certificate was refused: {}", p.0),
                        None => format!("the peer's certificate was refused: {}", o.0),
                    }
                }
                rustls::Error::InvalidCertificate(c) => {
                    format!("the peer's certificate was refused: {c:?}")
                }
                other => other.to_string(),
            });
        }
        cur = e.source();
    }
    None
}

/// Client side: accepts a server whose SVID chains to the trust source and carries the
/// expected SPIFFE ID (the DNS name in the URL is not used).
pub struct SpiffeServerVerifier {
    /// None only for `insecure_bootstrap`: the chain is not checked, the SPIFFE ID is.
    roots: Option<Arc<dyn TrustSource>>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected)
            .finish()
    }
}

impl SpiffeServerVerifier {
    pub fn new(roots: Arc<dyn TrustSource>, expected: SpiffeId) -> Self {
        Self {
            roots: Some(roots),
            expected,
            provider: provider(),
        }
    }
}

fn rejected(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(PeerRejected(msg)),
    )))
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = match &self.roots {
            Some(roots) => verify(end_entity, intermediates, roots.as_ref(), now)?,
            None => {
                tracing::warn!(
                    "insecure bootstrap: trusting the server's certificate without checking its chain"
                );
                let info = ironpact_spiffe::x509::CertInfo::parse(end_entity.as_ref())
                    .map_err(|e| rejected(e.to_string()))?;
                info.uri_sans
                    .first()
                    .and_then(|u| SpiffeId::parse(u).ok())
                    .ok_or_else(|| rejected("server certificate has no SPIFFE ID".into()))?
            }
        };
        if id != self.expected {
            return Err(rejected(format!(
                "server presented {id}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    provider_signatures!();
}

/// Server side: asks for a client SVID but does not require one (attestation comes before
/// the agent has an SVID); a presented one must chain to the trust source. Handlers decide
/// which calls need it.
pub struct SpiffeClientVerifier {
    roots: Arc<dyn TrustSource>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpiffeClientVerifier")
    }
}

impl SpiffeClientVerifier {
    pub fn new(roots: Arc<dyn TrustSource>) -> Self {
        Self {
            roots,
            provider: provider(),
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify(end_entity, intermediates, self.roots.as_ref(), now)?;
        Ok(ClientCertVerified::assertion())
    }

    provider_signatures!();
}

/// The SVID this side presents; replaced on rotation without touching open connections.
#[derive(Default)]
pub struct SvidCell(RwLock<Option<Arc<CertifiedKey>>>);

impl fmt::Debug for SvidCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SvidCell")
    }
}

impl SvidCell {
    /// Installs a chain (leaf first) and its PKCS#8 private key.
    pub fn set(&self, chain: Vec<Vec<u8>>, pkcs8: &[u8]) -> Result<(), rustls::Error> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
        let signer = provider().key_provider.load_private_key(key)?;
        let ck = CertifiedKey::new(
            chain.into_iter().map(CertificateDer::from).collect(),
            signer,
        );
        if let Ok(mut g) = self.0.write() {
            *g = Some(Arc::new(ck));
        }
        Ok(())
    }

    pub fn clear(&self) {
        if let Ok(mut g) = self.0.write() {
            *g = None;
        }
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|g| g.clone())
    }

    /// The chain presented now (leaf first, DER), empty before the first `set`.
    pub fn chain(&self) -> Vec<Vec<u8>> {
        self.get()
            .map(|ck| ck.cert.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default()
    }
}

impl rustls::server::ResolvesServerCert for SvidCell {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl rustls::client::ResolvesClientCert for SvidCell {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// A rustls server config presenting `svid` and verifying optional client SVIDs.
pub fn server_config(
    svid: Arc<SvidCell>,
    roots: Arc<dyn TrustSource>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(roots)))
        .with_cert_resolver(svid);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A rustls client config that accepts only `expected` and presents `svid` when it holds one.
pub fn client_config(
    roots: Arc<dyn TrustSource>,
    expected: SpiffeId,
    svid: Option<Arc<SvidCell>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(roots, expected)));
    let mut cfg = match svid {
        Some(cell) => b.with_client_cert_resolver(cell),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A lazily connecting gRPC channel to `addr` (host:port) over TLS with `cfg`.
pub fn channel(
    addr: &str,
    cfg: rustls::ClientConfig,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let target = addr.to_string();
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(10));
    Ok(
        ep.connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                // The server is identified by its SPIFFE ID, not by this name.
                let name =
                    ServerName::try_from("ironpact-server").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        })),
    )
}

/// A server-side TLS connection that tells tonic handlers who the peer is: requests carry
/// [`PeerCerts`] in their extensions.
pub struct TlsConn(pub tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

/// The client's certificate chain (leaf first), when it presented one.
#[derive(Clone, Debug, Default)]
pub struct PeerCerts(pub Option<Arc<Vec<Vec<u8>>>>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerCerts;

    fn connect_info(&self) -> PeerCerts {
        let (_, session) = self.0.get_ref();
        PeerCerts(
            session
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|d| d.as_ref().to_vec()).collect())),
        )
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// A client config for an agent without a trust bundle (its first attestation, and the first
/// sync that brings the bundle it then pins): the server's chain is not checked, only its
/// SPIFFE ID. Dangerous by design; used only when the operator set `insecure_bootstrap = true`.
pub fn client_config_insecure(
    expected: SpiffeId,
    svid: Option<Arc<SvidCell>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            roots: None,
            expected,
            provider: provider(),
        }));
    let mut cfg = match svid {
        Some(cell) => b.with_client_cert_resolver(cell),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
