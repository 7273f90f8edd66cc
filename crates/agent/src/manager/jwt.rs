//! JWT-SVIDs, cached per (entry, audience set) until half their life, bounded.

use super::*;

impl Agent {
    /// The token was signed by a JWT authority the bundle marks tainted: mint a new one.
    fn jwt_key_tainted(&self, token: &str) -> bool {
        let view = self.state.read();
        let Some(b) = view.bundle.as_ref().filter(|b| !b.jwt_tainted.is_empty()) else {
            return false;
        };
        jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .is_some_and(|kid| b.jwt_tainted.contains(&kid))
    }

    /// A JWT-SVID for `entry_id` at `revision`, cached until half of its life is gone (an
    /// entry changed since, say one that opted out of attestation claims, gets a new one).
    pub async fn jwt_svid(
        &self,
        entry_id: &str,
        revision: i64,
        audience: &[String],
    ) -> Result<(String, String), tonic::Status> {
        let mut aud = audience.to_vec();
        aud.sort();
        let key = (entry_id.to_string(), revision, aud);
        let t = self.clock.now();
        if let Some((tok, iat, exp)) = self
            .jwt_cache
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
            && t < iat + (exp - iat) / 2
            && !self.jwt_key_tainted(&tok)
        {
            return Ok((tok, String::new()));
        }
        let mut client = self
            .client()
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let r = client
            .new_jwtsvid(pb::NewJwtsvidRequest {
                entry_id: entry_id.to_string(),
                audience: audience.to_vec(),
            })
            .await?
            .into_inner();
        if let Ok(mut c) = self.jwt_cache.lock() {
            if c.len() >= JWT_CACHE_MAX {
                // past half-life a token is minted again anyway; then the soonest to expire
                c.retain(|_, v| t < v.1 + (v.2 - v.1) / 2);
                if c.len() >= JWT_CACHE_MAX {
                    let mut exps: Vec<i64> = c.values().map(|v| v.2).collect();
                    exps.sort_unstable();
                    let cut = exps[exps.len() / 2];
                    c.retain(|_, v| v.2 > cut);
                }
            }
            c.insert(key, (r.token.clone(), r.issued_at, r.expires_at));
        }
        Ok((r.token, r.spiffe_id))
    }
}
