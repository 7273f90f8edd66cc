//! What the `aws_iid` agent sends and the server reads: the instance identity document and
//! its PKCS#7 RSA-2048 signature, as JSON.

/// The AttestationData payload of `aws_iid`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct IidPayload {
    /// The instance identity document, exactly as IMDS served it.
    pub document: String,
    /// Base64 DER PKCS#7 from `/latest/dynamic/instance-identity/rsa2048`.
    pub signature_rsa2048: String,
}
