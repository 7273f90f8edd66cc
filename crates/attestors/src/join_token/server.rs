//! The `join_token` attestor: a single-use, expiring token an operator generated.
//! Agent ID `spiffe://<td>/spire/agent/join_token/<token>`, as SPIRE names it.

use crate::{AttestError, Attested, Challenger, Evidence, NodeAttestor};
use ironpact_datastore::DataStore;
use ironpact_spiffe::TrustDomain;

pub struct JoinTokenAttestor {
    pub ds: DataStore,
    pub trust_domain: TrustDomain,
}

#[async_trait::async_trait]
impl NodeAttestor for JoinTokenAttestor {
    fn name(&self) -> &'static str {
        "join_token"
    }

    fn single_use(&self) -> bool {
        true
    }

    async fn attest(
        &self,
        ev: Evidence<'_>,
        _: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        let token = std::str::from_utf8(ev.payload)
            .map_err(|_| AttestError::Malformed("join token is not UTF-8".into()))?
            .trim();
        if token.is_empty()
            || token.len() > 128
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(AttestError::Malformed(
                "join token must be letters, digits and '-'".into(),
            ));
        }
        // Taking it deletes it: a token works once, even when it turns out expired.
        let expires_at = match self.ds.take_join_token(token).await {
            Ok(x) => x,
            Err(ironpact_datastore::Error::NotFound { .. }) => {
                return Err(AttestError::UnknownToken);
            }
            Err(e) => return Err(e.into()),
        };
        if expires_at < ev.now {
            return Err(AttestError::ExpiredToken {
                expired_at: expires_at,
            });
        }
        let agent_id = self
            .trust_domain
            .id_with_path(&format!("/spire/agent/join_token/{token}"))
            .map_err(|e| AttestError::Malformed(e.to_string()))?;
        Ok(Attested {
            agent_id,
            selectors: Vec::new(),
            can_reattest: false,
            tee_instance: None,
            claims: None,
        })
    }
}
