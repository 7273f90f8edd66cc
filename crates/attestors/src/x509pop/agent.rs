//! The `x509pop` agent half: the node's certificate chain as the payload, and the proof of
//! possession (its key signing the server's nonce and the agent's CSR key). Files are read
//! again at each attestation, so a certificate renewed on disk is used without a restart.

use super::protocol::{Payload, signed_message};
use crate::agent::{AgentAttestError, BaseAgent};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use x509_parser::prelude::{FromDer, X509Certificate};

/// `NodeAttestor "x509pop"` on the agent (SPIRE's names).
#[derive(Debug, Clone)]
pub struct X509PopAgentConfig {
    /// PEM private key of the node certificate (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub private_key_path: PathBuf,
    /// PEM: the node certificate first, then any intermediates.
    pub certificate_path: PathBuf,
    /// PEM intermediates appended to those of `certificate_path`.
    pub intermediates_path: Option<PathBuf>,
}

fn local(message: impl Into<String>) -> AgentAttestError {
    AgentAttestError::Local {
        attestor: "x509pop",
        message: message.into(),
    }
}

enum NodeKey {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

impl NodeKey {
    fn public_key(&self) -> &[u8] {
        match self {
            NodeKey::Ecdsa(k) => k.public_key().as_ref(),
            NodeKey::Ed25519(k) => k.public_key().as_ref(),
            NodeKey::Rsa(k) => k.public_key().as_ref(),
        }
    }

    /// ECDSA with the curve's hash, Ed25519, or RSA-PSS with SHA-256: the schemes the server
    /// half accepts for each key type.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, AgentAttestError> {
        let rng = SystemRandom::new();
        match self {
            NodeKey::Ecdsa(k) => k
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| local("ECDSA signing failed")),
            NodeKey::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
            NodeKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PSS_SHA256, &rng, msg, &mut sig)
                    .map_err(|_| local("RSA signing failed"))?;
                Ok(sig)
            }
        }
    }

    fn from_pkcs8(der: &[u8]) -> Option<Self> {
        let rng = SystemRandom::new();
        for alg in [
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        ] {
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(alg, der, &rng) {
                return Some(NodeKey::Ecdsa(k));
            }
        }
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Some(NodeKey::Ed25519(k));
        }
        RsaKeyPair::from_pkcs8(der).ok().map(NodeKey::Rsa)
    }

    /// A PEM private key: `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1) or
    /// `EC PRIVATE KEY` (SEC1, P-256 or P-384).
    fn from_pem(text: &[u8]) -> Result<Self, String> {
        let p = pem::parse(text).map_err(|e| format!("not a PEM private key: {e}"))?;
        let der = p.contents();
        let key = match p.tag() {
            "PRIVATE KEY" => Self::from_pkcs8(der),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(der).ok().map(NodeKey::Rsa),
            "EC PRIVATE KEY" => {
                use p256::pkcs8::EncodePrivateKey;
                let pkcs8 = p256::SecretKey::from_sec1_der(der)
                    .ok()
                    .and_then(|k| k.to_pkcs8_der().ok())
                    .or_else(|| {
                        p384::SecretKey::from_sec1_der(der)
                            .ok()
                            .and_then(|k| k.to_pkcs8_der().ok())
                    });
                pkcs8.and_then(|d| Self::from_pkcs8(d.as_bytes()))
            }
            other => return Err(format!("a PEM {other:?} block is not a private key")),
        };
        key.ok_or_else(|| {
            "unsupported key: use ECDSA P-256/P-384, Ed25519 or RSA (2048 bits or more)".into()
        })
    }
}

/// The node's certificate chain and key, as read from disk.
struct Loaded {
    chain: Vec<Vec<u8>>,
    key: NodeKey,
}

fn certs(path: &PathBuf) -> Result<Vec<Vec<u8>>, AgentAttestError> {
    let text = std::fs::read(path).map_err(|e| local(format!("{}: {e}", path.display())))?;
    ironpact_spiffe::x509::certs_from_pem(&String::from_utf8_lossy(&text))
        .map_err(|e| local(format!("{}: {e}", path.display())))
}

impl X509PopAgentConfig {
    fn load(&self) -> Result<Loaded, AgentAttestError> {
        let mut chain = certs(&self.certificate_path)?;
        if chain.is_empty() {
            return Err(local(format!(
                "{} holds no PEM certificate: put the node certificate there",
                self.certificate_path.display()
            )));
        }
        if let Some(p) = &self.intermediates_path {
            chain.extend(certs(p)?);
        }
        let key_path = self.private_key_path.display();
        #[cfg(unix)]
        if let Ok(m) = std::fs::metadata(&self.private_key_path) {
            use std::os::unix::fs::PermissionsExt;
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %key_path, mode = format!("{:o}", m.permissions().mode() & 0o777), "the x509pop private key is readable by others: chmod 600 it");
            }
        }
        let text =
            std::fs::read(&self.private_key_path).map_err(|e| local(format!("{key_path}: {e}")))?;
        let key = NodeKey::from_pem(&text).map_err(|e| local(format!("{key_path}: {e}")))?;
        let (_, leaf) = X509Certificate::from_der(&chain[0]).map_err(|e| {
            local(format!(
                "{}: the node certificate: {e}",
                self.certificate_path.display()
            ))
        })?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.public_key() {
            return Err(local(format!(
                "{key_path} is not the key of the certificate in {}: point private_key_path at its key",
                self.certificate_path.display()
            )));
        }
        Ok(Loaded { chain, key })
    }
}

/// The agent half: the last chain sent is the one whose key answers the challenge.
pub struct X509PopAgent {
    cfg: X509PopAgentConfig,
    loaded: Mutex<Option<Arc<Loaded>>>,
}

impl X509PopAgent {
    /// Reads the files once, so a wrong path or key fails at start.
    pub fn new(cfg: X509PopAgentConfig) -> Result<Self, AgentAttestError> {
        let loaded = cfg.load()?;
        Ok(Self {
            cfg,
            loaded: Mutex::new(Some(Arc::new(loaded))),
        })
    }
}

#[async_trait::async_trait]
impl BaseAgent for X509PopAgent {
    async fn payload(&self, _renew: bool, _: Option<&str>) -> Result<Vec<u8>, AgentAttestError> {
        let loaded = Arc::new(self.cfg.load()?);
        let payload =
            serde_json::to_vec(&Payload::new(&loaded.chain)).map_err(|e| local(e.to_string()))?;
        if let Ok(mut g) = self.loaded.lock() {
            *g = Some(loaded);
        }
        Ok(payload)
    }

    fn challenges(&self) -> usize {
        1
    }

    fn answer(&self, nonce: &[u8], spki: &[u8]) -> Result<Vec<u8>, AgentAttestError> {
        let loaded = self
            .loaded
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| local("no certificate was sent"))?;
        loaded.key.sign(&signed_message(nonce, spki))
    }
}
