//! The agent API over TLS against a real server: join-token attestation, pushed entry
//! sync, SVID signing for authorized entries, renewal, eviction and refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_proto::agent::v2 as pb;
use ironpact_proto::agent::v2::agent_api_client::AgentApiClient;
use ironpact_spiffe::SpiffeId;
use ironpact_tls::{SharedRoots, SvidCell};
use std::sync::Arc;
use std::time::Duration;
use support::{Backend, TestClock, TestServer, runtime};
use tonic::Code;

fn csr_and_key() -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    (csr.der().to_vec(), key.serialize_der())
}

fn params(kind: &str, payload: &[u8], csr: Vec<u8>) -> pb::AttestAgentRequest {
    pb::AttestAgentRequest {
        step: Some(pb::attest_agent_request::Step::Params(
            pb::attest_agent_request::Params {
                data: Some(pb::AttestationData {
                    r#type: kind.into(),
                    payload: payload.to_vec(),
                }),
                csr,
            },
        )),
    }
}

async fn attest(
    client: &mut AgentApiClient<tonic::transport::Channel>,
    req: pb::AttestAgentRequest,
    renew: bool,
) -> Result<ironpact_proto::server::v1::X509svid, tonic::Status> {
    let stream = tokio_stream::iter(vec![req]);
    let mut resp = if renew {
        client.renew_agent(stream).await?.into_inner()
    } else {
        client.attest_agent(stream).await?.into_inner()
    };
    match resp.message().await?.and_then(|m| m.step) {
        Some(pb::attest_agent_response::Step::Result(r)) => Ok(r.svid.unwrap()),
        other => panic!("unexpected attestation step {other:?}"),
    }
}

async fn next_snapshot(
    s: &mut tonic::Streaming<pb::SyncAuthorizedResponse>,
) -> pb::SyncAuthorizedResponse {
    tokio::time::timeout(Duration::from_secs(15), s.message())
        .await
        .expect("a snapshot arrives")
        .unwrap()
        .unwrap()
}

#[test]
fn join_token_attestation_sync_and_signing() {
    // the server runs on a shifted clock, so a token expires by moving it (a few seconds at
    // most: this test's own TLS checks run on real time, inside the SVIDs' 10 s backdating)
    let clock = TestClock::install();
    let s = TestServer::start(Backend::Sqlite);
    let token = s
        .cli(&[
            "token",
            "generate",
            "-spiffeID",
            "spiffe://example.org/node1",
        ])
        .expect_ok()
        .stdout
        .clone();
    let token = token.trim().strip_prefix("Token: ").unwrap().to_string();
    let roots = s.bundle_roots();
    let trust = Arc::new(SharedRoots::new(roots.clone()));
    let server_id = SpiffeId::parse("spiffe://example.org/spire/server").unwrap();
    let addr = s.agent_addr();
    let rt = runtime();
    rt.block_on(async {
        let anon = ironpact_tls::channel(
            &addr,
            ironpact_tls::client_config(trust.clone(), server_id.clone(), None).unwrap(),
        )
        .unwrap();
        let mut anon = AgentApiClient::new(anon);

        // refusals before anything is issued
        let (csr, key) = csr_and_key();
        let e = attest(&mut anon, params("tpm", b"x", csr.clone()), false)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("not configured"), "{e:?}");
        let e = attest(
            &mut anon,
            params("join_token", b"no-such-token", csr.clone()),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = attest(
            &mut anon,
            params("join_token", token.as_bytes(), b"junk".to_vec()),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = anon
            .sync_authorized(pb::SyncAuthorizedRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

        // attestation
        let svid = attest(
            &mut anon,
            params("join_token", token.as_bytes(), csr.clone()),
            false,
        )
        .await
        .unwrap();
        let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
        assert_eq!(svid.id, agent_id);
        let chain: Vec<&[u8]> = svid.cert_chain.iter().map(Vec::as_slice).collect();
        assert_eq!(
            ironpact_spiffe::x509::verify_svid_chain(&chain, &roots, svid.expires_at - 60)
                .unwrap()
                .as_str(),
            agent_id
        );
        let e = attest(
            &mut anon,
            params("join_token", token.as_bytes(), csr.clone()),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.code(),
            Code::PermissionDenied,
            "a join token works once: {e:?}"
        );

        let cell = Arc::new(SvidCell::default());
        cell.set(svid.cert_chain.clone(), &key).unwrap();
        let ch = ironpact_tls::channel(
            &addr,
            ironpact_tls::client_config(trust.clone(), server_id.clone(), Some(cell.clone()))
                .unwrap(),
        )
        .unwrap();
        let mut client = AgentApiClient::new(ch.clone());

        // the pushed snapshot: the token's node alias, the bundle
        let mut sync = client
            .sync_authorized(pb::SyncAuthorizedRequest {})
            .await
            .unwrap()
            .into_inner();
        let snap = next_snapshot(&mut sync).await;
        assert!(snap.full && !snap.more);
        assert_eq!(snap.entries.len(), 1);
        assert_eq!(snap.entries[0].spiffe_id, "spiffe://example.org/node1");
        let asn1 = |b: &ironpact_proto::server::v1::Bundle| -> Vec<Vec<u8>> {
            b.x509_authorities.iter().map(|c| c.asn1.clone()).collect()
        };
        assert_eq!(asn1(snap.bundle.as_ref().unwrap()), roots);

        // an entry created by the operator is pushed
        let created = s
            .cli(&[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/web",
                "-parentID",
                "spiffe://example.org/node1",
                "-selector",
                "unix:uid:1000",
                "-dns",
                "web.example.org",
                "-output",
                "json",
            ])
            .expect_ok()
            .json();
        let web_id = created["results"][0]["entry"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        // only the change is pushed (a delta), without polling
        let delta = next_snapshot(&mut sync).await;
        assert!(!delta.full, "{delta:?}");
        assert_eq!(delta.entries.len(), 1, "{delta:?}");
        assert_eq!(delta.entries[0].id, web_id);
        assert!(delta.bundle.is_none() && delta.removed_entry_ids.is_empty());

        // an agent of an earlier release speaks v1: the same view in v1's Entry and Bundle,
        // as pages and deltas or (the earliest) whole snapshots; its other calls are v2's
        for deltas in [true, false] {
            use ironpact_proto::agent::v1 as old;
            let mut v1 = old::agent_api_client::AgentApiClient::new(ch.clone());
            let mut sync = v1
                .sync_authorized(old::SyncAuthorizedRequest { deltas })
                .await
                .unwrap()
                .into_inner();
            let snap = tokio::time::timeout(Duration::from_secs(15), sync.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(snap.full && !snap.more, "{snap:?}");
            assert_eq!(snap.bundle.as_ref().unwrap().x509_authorities, roots);
            let web = snap.entries.iter().find(|e| e.id == web_id).unwrap();
            assert_eq!(
                (web.spiffe_id.as_str(), web.dns_names.as_slice()),
                (
                    "spiffe://example.org/web",
                    &["web.example.org".to_string()][..]
                )
            );
            assert_eq!(web.selectors[0].r#type, "unix");
            let (wcsr, _) = csr_and_key();
            let r = v1
                .batch_new_x509svid(pb::BatchNewX509svidRequest {
                    params: vec![pb::NewX509svidParams {
                        entry_id: web_id.clone(),
                        csr: wcsr,
                    }],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.results[0].code, 0, "{r:?}");
        }
        // an entry for somebody else is not
        s.cli(&[
            "entry",
            "create",
            "-spiffeID",
            "spiffe://example.org/other",
            "-parentID",
            "spiffe://example.org/elsewhere",
            "-selector",
            "unix:uid:1",
        ])
        .expect_ok();

        // SVIDs for authorized entries only
        let (wcsr, _) = csr_and_key();
        let r = client
            .batch_new_x509svid(pb::BatchNewX509svidRequest {
                params: vec![
                    pb::NewX509svidParams {
                        entry_id: web_id.clone(),
                        csr: wcsr.clone(),
                    },
                    pb::NewX509svidParams {
                        entry_id: "not-mine".into(),
                        csr: wcsr.clone(),
                    },
                    pb::NewX509svidParams {
                        entry_id: web_id.clone(),
                        csr: b"junk".to_vec(),
                    },
                ],
            })
            .await
            .unwrap()
            .into_inner();
        let codes: Vec<i32> = r.results.iter().map(|x| x.code).collect();
        assert_eq!(
            codes,
            [
                0,
                Code::PermissionDenied as i32,
                Code::InvalidArgument as i32
            ]
        );
        let w = r.results[0].svid.as_ref().unwrap();
        let chain: Vec<&[u8]> = w.cert_chain.iter().map(Vec::as_slice).collect();
        assert_eq!(
            ironpact_spiffe::x509::verify_svid_chain(&chain, &roots, w.expires_at - 60)
                .unwrap()
                .as_str(),
            "spiffe://example.org/web"
        );
        let info = ironpact_spiffe::x509::CertInfo::parse(&w.cert_chain[0]).unwrap();
        assert_eq!(info.dns_names, ["web.example.org"]);

        let jwt = client
            .new_jwtsvid(pb::NewJwtsvidRequest {
                entry_id: web_id.clone(),
                audience: vec!["db".into()],
            })
            .await
            .unwrap()
            .into_inner();
        let jwks: Vec<ironpact_spiffe::JwtAuthority> = snap
            .bundle
            .as_ref()
            .unwrap()
            .jwt_authorities
            .iter()
            .map(|k| ironpact_spiffe::JwtAuthority {
                key_id: k.key_id.clone(),
                public_key_der: k.public_key.clone(),
                expires_at: k.expires_at,
            })
            .collect();
        let v = ironpact_spiffe::jwt::validate(&jwt.token, &jwks, "db", jwt.issued_at).unwrap();
        assert_eq!(v.spiffe_id.as_str(), "spiffe://example.org/web");

        // an enclave entry (sgx: selectors) authorized for this agent is still never signed
        // for a key the agent names: only for one a verified quote binds (the enclave API)
        let enclave = s
            .cli(&[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/enclave",
                "-parentID",
                "spiffe://example.org/node1",
                "-selector",
                &format!("sgx:mrenclave:{}", "e1".repeat(32)),
                "-output",
                "json",
            ])
            .expect_ok()
            .json();
        let enclave_id = enclave["results"][0]["entry"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (ecsr, _) = csr_and_key();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let refused = loop {
            let r = client
                .batch_new_x509svid(pb::BatchNewX509svidRequest {
                    params: vec![pb::NewX509svidParams {
                        entry_id: enclave_id.clone(),
                        csr: ecsr.clone(),
                    }],
                })
                .await
                .unwrap()
                .into_inner();
            // until the cache has the entry it is "not authorized"; then "selects an enclave"
            if r.results[0].message.contains("SGX enclave") || std::time::Instant::now() > deadline
            {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(
            refused.results[0].code,
            Code::PermissionDenied as i32,
            "{refused:?}"
        );
        assert!(
            refused.results[0].message.contains("SGX enclave"),
            "{refused:?}"
        );
        let e = client
            .new_jwtsvid(pb::NewJwtsvidRequest {
                entry_id: enclave_id.clone(),
                audience: vec!["db".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("SGX enclave"), "{e:?}");

        // the operator sees the agent
        let shown = s.agent_show(&agent_id);
        assert!(shown.contains("Attestation type  : join_token"), "{shown}");
        assert!(
            s.cli(&["agent", "list"])
                .expect_ok()
                .stdout
                .contains(&agent_id)
        );

        // renewal: a new key and serial. Until the agent presents the new SVID the old one
        // still works (the answer may never have reached it: a server died between its commit
        // and its reply); the first use of the new one retires the old one for good.
        let (csr1, _lost_key) = csr_and_key();
        let svid1 = attest(&mut client, params("join_token", b"", csr1), true)
            .await
            .unwrap();
        assert_eq!(svid1.id, agent_id);
        // the channel still presents the old SVID: accepted, as if the answer had been lost
        client
            .new_jwtsvid(pb::NewJwtsvidRequest {
                entry_id: web_id.clone(),
                audience: vec!["db".into()],
            })
            .await
            .unwrap();
        // and renewing again with it works too (the previous answer was lost); that renewal's
        // SVID is the one the agent holds from now on
        let (csr2, key2) = csr_and_key();
        let svid2 = attest(&mut client, params("join_token", b"", csr2), true)
            .await
            .unwrap();
        cell.set(svid2.cert_chain.clone(), &key2).unwrap();
        let ch2 = ironpact_tls::channel(
            &addr,
            ironpact_tls::client_config(trust.clone(), server_id.clone(), Some(cell.clone()))
                .unwrap(),
        )
        .unwrap();
        let mut client2 = AgentApiClient::new(ch2);
        client2
            .new_jwtsvid(pb::NewJwtsvidRequest {
                entry_id: web_id.clone(),
                audience: vec!["db".into()],
            })
            .await
            .unwrap();
        // the new SVID was used: the old one is refused from now on
        let e = client
            .new_jwtsvid(pb::NewJwtsvidRequest {
                entry_id: web_id.clone(),
                audience: vec!["db".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("not its current one"), "{e:?}");

        // an expired join token is refused (and spent)
        let short = s
            .cli(&["token", "generate", "-ttl", "1"])
            .expect_ok()
            .stdout
            .clone();
        let short = short.trim().strip_prefix("Token: ").unwrap().to_string();
        clock.advance(5);
        let (c3, _) = csr_and_key();
        let e = attest(&mut anon, params("join_token", short.as_bytes(), c3), false)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("expired"), "{e:?}");

        // a banned agent is refused at once
        let other = s.cli(&["token", "generate"]).expect_ok().stdout.clone();
        let other = other.trim().strip_prefix("Token: ").unwrap().to_string();
        let (c4, k4) = csr_and_key();
        let osvid = attest(&mut anon, params("join_token", other.as_bytes(), c4), false)
            .await
            .unwrap();
        let ocell = Arc::new(SvidCell::default());
        ocell.set(osvid.cert_chain.clone(), &k4).unwrap();
        let och = ironpact_tls::channel(
            &addr,
            ironpact_tls::client_config(trust.clone(), server_id.clone(), Some(ocell)).unwrap(),
        )
        .unwrap();
        let mut oclient = AgentApiClient::new(och);
        let mut osync = oclient
            .sync_authorized(pb::SyncAuthorizedRequest {})
            .await
            .unwrap()
            .into_inner();
        next_snapshot(&mut osync).await;
        s.cli(&["agent", "ban", "-spiffeID", &osvid.id]).expect_ok();
        let end = tokio::time::timeout(Duration::from_secs(15), osync.message())
            .await
            .unwrap();
        assert_eq!(end.unwrap_err().code(), Code::PermissionDenied);
        let e = oclient
            .sync_authorized(pb::SyncAuthorizedRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("banned"), "{e:?}");
        assert!(
            s.cli(&["agent", "show", "-spiffeID", &osvid.id])
                .expect_ok()
                .stdout
                .contains("Banned            : true")
        );

        // eviction ends the agent's sync stream and its access
        let mut sync2 = client2
            .sync_authorized(pb::SyncAuthorizedRequest {})
            .await
            .unwrap()
            .into_inner();
        next_snapshot(&mut sync2).await;
        s.cli(&["agent", "evict", "-spiffeID", &agent_id])
            .expect_ok();
        let end = tokio::time::timeout(Duration::from_secs(15), sync2.message())
            .await
            .unwrap();
        assert_eq!(end.unwrap_err().code(), Code::PermissionDenied);
        let e = client2
            .new_jwtsvid(pb::NewJwtsvidRequest {
                entry_id: web_id,
                audience: vec!["db".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
    });
}
