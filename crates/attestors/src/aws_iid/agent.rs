//! The EC2 instance metadata service, IMDSv2 only: a session token from
//! `PUT /latest/api/token`, then the instance identity document and its PKCS#7 RSA-2048
//! signature with that token. This is what the `aws_iid` attestor sends to the server.

use super::protocol::IidPayload;
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// How long the session token lives; one attestation needs seconds.
const TOKEN_TTL_SECONDS: u32 = 60;

#[derive(Debug, Clone)]
pub struct ImdsConfig {
    pub endpoint: String,
    pub timeout: Duration,
}

impl Default for ImdsConfig {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.into(),
            timeout: Duration::from_secs(5),
        }
    }
}

pub struct Imds {
    cfg: ImdsConfig,
    client: reqwest::Client,
}

impl Imds {
    pub fn new(cfg: ImdsConfig) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(2)))
            // IMDS answers directly; a proxy would see the token
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { cfg, client })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.endpoint.trim_end_matches('/'))
    }

    fn unreachable(&self, e: &reqwest::Error) -> String {
        format!(
            "cannot reach the EC2 instance metadata service at {}: {e} (is this agent on EC2 with IMDS enabled? ec2_metadata_endpoint sets another address)",
            self.cfg.endpoint
        )
    }

    async fn token(&self) -> Result<String, String> {
        let url = self.url("/latest/api/token");
        let resp = self
            .client
            .put(&url)
            .header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                TOKEN_TTL_SECONDS.to_string(),
            )
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(format!(
                "IMDSv2 refused a session token at {url}: HTTP {} (is IMDS enabled, with a hop limit that reaches this process?)",
                resp.status()
            ));
        }
        resp.text().await.map_err(|e| self.unreachable(&e))
    }

    async fn get(&self, token: &str, path: &str) -> Result<String, String> {
        let url = self.url(path);
        let resp = self
            .client
            .get(&url)
            .header("X-aws-ec2-metadata-token", token)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(format!("IMDS {url}: HTTP {}", resp.status()));
        }
        resp.text().await.map_err(|e| self.unreachable(&e))
    }

    /// The instance identity document and its RSA-2048 signature, as one JSON payload.
    pub async fn identity(&self) -> Result<Vec<u8>, String> {
        let token = self.token().await?;
        let document = self
            .get(&token, "/latest/dynamic/instance-identity/document")
            .await?;
        let signature_rsa2048 = self
            .get(&token, "/latest/dynamic/instance-identity/rsa2048")
            .await?;
        serde_json::to_vec(&IidPayload {
            document,
            signature_rsa2048,
        })
        .map_err(|e| e.to_string())
    }
}
