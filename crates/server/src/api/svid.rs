//! SVIDService: X509-SVIDs from an operator's CSR, JWT-SVIDs on request.

use super::convert::{self, member_id};
use super::{SharedCore, ca_status};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::svid_service_server::SvidService;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::info;

pub struct SvidApi(pub SharedCore);

fn ttl(raw: i32, default: Duration) -> Result<Duration, Status> {
    match raw {
        n if n < 0 => Err(Status::invalid_argument("invalid ttl: cannot be negative")),
        0 => Ok(default),
        n => Ok(Duration::from_secs(n as u64)),
    }
}

#[tonic::async_trait]
impl SvidService for SvidApi {
    async fn mint_x509svid(
        &self,
        req: Request<pb::MintX509svidRequest>,
    ) -> Result<Response<pb::MintX509svidResponse>, Status> {
        let r = req.get_ref();
        if r.csr.is_empty() {
            return Err(Status::invalid_argument(
                "csr is required (a DER PKCS#10 request)",
            ));
        }
        let csr = ironpact_spiffe::x509::parse_csr(&r.csr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if csr.uri_sans.len() != 1 {
            return Err(Status::invalid_argument(format!(
                "malformed CSR: it must carry exactly one URI SAN (the SPIFFE ID), found {}",
                csr.uri_sans.len()
            )));
        }
        let id = member_id("CSR URI SAN", &csr.uri_sans[0], &self.0.cfg.trust_domain)?;
        for d in &csr.dns_names {
            convert::dns_name(d)?;
        }
        let ttl = ttl(r.ttl, self.0.cfg.default_x509_svid_ttl)?;
        let issued = self
            .0
            .ca
            .sign_x509_svid(&id, &csr.spki_der, &csr.dns_names, ttl)
            .map_err(ca_status)?;
        info!(spiffe_id = %id, serial = %issued.serial_hex, expires_at = issued.expires_at, "minted X509-SVID");
        Ok(Response::new(pb::MintX509svidResponse {
            svid: Some(pb::X509svid {
                id: id.to_string(),
                cert_chain: issued.chain,
                expires_at: issued.expires_at,
            }),
        }))
    }

    async fn mint_jwtsvid(
        &self,
        req: Request<pb::MintJwtsvidRequest>,
    ) -> Result<Response<pb::MintJwtsvidResponse>, Status> {
        let r = req.get_ref();
        let id = member_id("id", &r.id, &self.0.cfg.trust_domain)?;
        if r.audience.is_empty() || r.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "at least one non-empty audience is required",
            ));
        }
        let ttl = ttl(r.ttl, self.0.cfg.default_jwt_svid_ttl)?;
        let (token, iat, exp) = self
            .0
            .ca
            .sign_jwt_svid(&id, &r.audience, ttl)
            .map_err(ca_status)?;
        info!(spiffe_id = %id, audience = ?r.audience, expires_at = exp, "minted JWT-SVID");
        Ok(Response::new(pb::MintJwtsvidResponse {
            svid: Some(pb::Jwtsvid {
                token,
                id: id.to_string(),
                expires_at: exp,
                issued_at: iat,
            }),
        }))
    }
}
