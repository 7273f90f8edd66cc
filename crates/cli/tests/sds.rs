//! Envoy SDS v3 on the Workload API socket, driven by a client built from Envoy's published
//! protos by a third party (the `envoy-types` crate), as an Envoy would: a StreamSecrets
//! stream asking for its SVID by SPIFFE ID and by `default`, our bundle by trust domain and by
//! `ROOTCA`, a federated bundle, and `ALL`; ACKs with the nonce; a rotation pushed before the
//! old SVID expires; a stale nonce ignored; a NACK logged; a change of names answered; a name
//! the workload may not have refused; FetchSecrets from an Envoy too old for the SPIFFE
//! validator (plain trusted CAs); DeltaSecrets unimplemented.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use envoy_types::pb::envoy::config::core::v3::{BuildVersion, Node, node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Backend, TestAgent, TestServer, join_token, my_uid, runtime};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

async fn channel(sock: &Path) -> tonic::transport::Channel {
    let sock = sock.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(sock).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

fn envoy(minor: u32) -> Option<Node> {
    Some(Node {
        id: "sidecar".into(),
        cluster: "web".into(),
        user_agent_name: "envoy".into(),
        user_agent_version_type: Some(node::UserAgentVersionType::UserAgentBuildVersion(
            BuildVersion {
                version: Some(SemanticVersion {
                    major_number: 1,
                    minor_number: minor,
                    patch: 0,
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    })
}

fn request(names: &[&str], version: &str, nonce: &str, minor: u32) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        node: envoy(minor),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: SECRET.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// The secrets of a response, by name.
fn secrets(r: &DiscoveryResponse) -> BTreeMap<String, secret::Type> {
    r.resources
        .iter()
        .map(|a| {
            assert_eq!(a.type_url, SECRET);
            let s = Secret::decode(a.value.as_slice()).unwrap();
            (s.name, s.r#type.unwrap())
        })
        .collect()
}

fn inline(d: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>) -> Vec<u8> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    match d.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => b.clone(),
        other => panic!("not inline bytes: {other:?}"),
    }
}

fn pem_ders(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .map(|p| p.unwrap().contents)
        .collect()
}

/// A tls_certificate secret: (leaf URI SAN, leaf DER), after checking the key is the leaf's.
fn tls_cert(t: &secret::Type) -> (String, Vec<u8>) {
    let secret::Type::TlsCertificate(c) = t else {
        panic!("not a tls_certificate: {t:?}")
    };
    let chain = pem_ders(&inline(&c.certificate_chain));
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let uri = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .find_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .unwrap();
    let key_pem = inline(&c.private_key);
    let key = x509_parser::pem::parse_x509_pem(&key_pem).unwrap().1;
    assert_eq!(key.label, "PRIVATE KEY");
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &key.contents,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    use ring::signature::KeyPair;
    assert_eq!(
        pair.public_key().as_ref(),
        leaf.public_key().subject_public_key.data.as_ref(),
        "the private key is not the certificate's"
    );
    (uri, chain[0].clone())
}

/// A validation context with the SPIFFE validator: trust domain name → roots (DER).
fn spiffe_validator(t: &secret::Type) -> BTreeMap<String, Vec<Vec<u8>>> {
    let secret::Type::ValidationContext(v) = t else {
        panic!("not a validation context: {t:?}")
    };
    assert!(
        v.trusted_ca.is_none(),
        "the SPIFFE validator carries the roots"
    );
    let c = v.custom_validator_config.as_ref().unwrap();
    assert_eq!(c.name, "envoy.tls.cert_validator.spiffe");
    let tc = c.typed_config.as_ref().unwrap();
    assert_eq!(
        tc.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    SpiffeCertValidatorConfig::decode(tc.value.as_slice())
        .unwrap()
        .trust_domains
        .into_iter()
        .map(|td| (td.name, pem_ders(&inline(&td.trust_bundle))))
        .collect()
}

async fn next(s: &mut tonic::Streaming<DiscoveryResponse>, within: Duration) -> DiscoveryResponse {
    tokio::time::timeout(within, s.message())
        .await
        .expect("no SDS response in time")
        .unwrap()
        .expect("the SDS stream ended")
}

async fn quiet(s: &mut tonic::Streaming<DiscoveryResponse>, for_: Duration) {
    if let Ok(m) = tokio::time::timeout(for_, s.message()).await {
        panic!("an answer where none was due: {m:?}");
    }
}

#[test]
fn envoy_sds_through_a_third_party_client() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/envoy-node");
    let a = TestAgent::start(&s, &token);
    let (partner_pem, partner_der) = support::partner_ca();
    let partner = a.dir.path().join("partner.pem");
    std::fs::write(&partner, partner_pem).unwrap();
    s.cli(&[
        "bundle",
        "set",
        "-id",
        "spiffe://partner.org",
        "-path",
        partner.to_str().unwrap(),
    ])
    .expect_ok();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/envoy",
        "-parentID",
        "spiffe://example.org/envoy-node",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
        "-federatesWith",
        "spiffe://partner.org",
        "-x509SVIDTTL",
        "20",
    ])
    .expect_ok();
    assert!(a.fetch_until_ok(&[]).ok());
    let own_roots = s.bundle_roots();
    let sock = a.socket.clone();

    runtime().block_on(async move {
        let mut c = SecretDiscoveryServiceClient::new(channel(&sock).await);
        let (tx, rx) = mpsc::channel(8);
        let all_names = [
            "spiffe://example.org/envoy",
            "default",
            "spiffe://example.org",
            "ROOTCA",
            "spiffe://partner.org",
            "ALL",
        ];
        tx.send(request(&all_names, "", "", 30)).await.unwrap();
        let mut inbound = c
            .stream_secrets(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let r1 = next(&mut inbound, Duration::from_secs(20)).await;
        assert_eq!(r1.type_url, SECRET);
        assert!(!r1.nonce.is_empty() && !r1.version_info.is_empty());
        let got = secrets(&r1);
        assert_eq!(
            got.keys().map(String::as_str).collect::<Vec<_>>(),
            {
                let mut n = all_names.to_vec();
                n.sort();
                n
            },
            "every name asked for, once"
        );
        let (uri, leaf1) = tls_cert(&got["spiffe://example.org/envoy"]);
        assert_eq!(uri, "spiffe://example.org/envoy");
        let (uri_d, leaf_d) = tls_cert(&got["default"]);
        assert_eq!(
            (uri_d.as_str(), &leaf_d),
            ("spiffe://example.org/envoy", &leaf1)
        );
        let own = spiffe_validator(&got["spiffe://example.org"]);
        assert_eq!(
            own,
            BTreeMap::from([("example.org".to_string(), own_roots.clone())])
        );
        assert_eq!(spiffe_validator(&got["ROOTCA"]), own);
        assert_eq!(
            spiffe_validator(&got["spiffe://partner.org"]),
            BTreeMap::from([("partner.org".to_string(), vec![partner_der.clone()])])
        );
        assert_eq!(
            spiffe_validator(&got["ALL"]),
            BTreeMap::from([
                ("example.org".to_string(), own_roots.clone()),
                ("partner.org".to_string(), vec![partner_der.clone()]),
            ])
        );

        // the ACK: nothing new to say
        tx.send(request(&all_names, &r1.version_info, &r1.nonce, 30))
            .await
            .unwrap();
        quiet(&mut inbound, Duration::from_millis(700)).await;
        // a request with a nonce that is not the last one sent is stale: ignored, even though
        // its names differ
        tx.send(request(&["default"], &r1.version_info, "stale", 30))
            .await
            .unwrap();
        quiet(&mut inbound, Duration::from_millis(700)).await;

        // rotation: pushed on the open stream, a new version, before the old SVID expires
        let old_expiry = ironpact_spiffe::x509::CertInfo::parse(&leaf1)
            .unwrap()
            .not_after;
        let r2 = next(&mut inbound, Duration::from_secs(30)).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(now < old_expiry, "rotated only after expiry");
        assert_ne!(r2.version_info, r1.version_info);
        assert_ne!(r2.nonce, r1.nonce);
        let got2 = secrets(&r2);
        let (_, leaf2) = tls_cert(&got2["default"]);
        assert_ne!(leaf2, leaf1, "the push carries the new SVID");
        assert_eq!(got2.len(), all_names.len());

        // a NACK (Envoy could not apply it, keeps version 1): logged, the stream goes on
        let mut nack = request(&all_names, &r1.version_info, &r2.nonce, 30);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "test: bad secret".into(),
            details: vec![],
        });
        tx.send(nack).await.unwrap();
        quiet(&mut inbound, Duration::from_millis(500)).await;

        // new names in the ACK: answered with just those
        tx.send(request(&["default"], &r2.version_info, &r2.nonce, 30))
            .await
            .unwrap();
        let r3 = next(&mut inbound, Duration::from_secs(10)).await;
        let got3 = secrets(&r3);
        assert_eq!(got3.keys().collect::<Vec<_>>(), ["default"]);

        // a name this workload may not have ends that stream: InvalidArgument, as SPIRE
        let (tx2, rx2) = mpsc::channel(2);
        tx2.send(request(&["spiffe://example.org/someone-else"], "", "", 30))
            .await
            .unwrap();
        let mut other = c
            .stream_secrets(ReceiverStream::new(rx2))
            .await
            .unwrap()
            .into_inner();
        let e = tokio::time::timeout(Duration::from_secs(10), other.message())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("someone-else"), "{e:?}");
        // another resource type is not served here
        let mut wrong = request(&["default"], "", "", 30);
        wrong.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        let e = c.fetch_secrets(wrong).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

        // FetchSecrets from an Envoy older than 1.18: plain trusted CAs, no versions
        let f = c
            .fetch_secrets(request(&["default", "ROOTCA"], "", "", 17))
            .await
            .unwrap()
            .into_inner();
        assert!(f.version_info.is_empty() && f.nonce.is_empty());
        let got_f = secrets(&f);
        let secret::Type::ValidationContext(v) = &got_f["ROOTCA"] else {
            panic!("{got_f:?}")
        };
        assert!(v.custom_validator_config.is_none());
        assert_eq!(pem_ders(&inline(&v.trusted_ca)), own_roots);
        let (uri_f, _) = tls_cert(&got_f["default"]);
        assert_eq!(uri_f, "spiffe://example.org/envoy");

        // "ALL" in one trusted_ca list is refused, as SPIRE refuses it
        let e = c
            .fetch_secrets(request(&["ALL"], "", "", 17))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        // the Envoy's node metadata turns the SPIFFE validator off (as a string, as SPIRE
        // reads it)
        let mut off = request(&["ROOTCA"], "", "", 30);
        off.node.as_mut().unwrap().metadata = Some(envoy_types::pb::google::protobuf::Struct {
            fields: [(
                "disable_spiffe_cert_validation".to_string(),
                envoy_types::pb::google::protobuf::Value {
                    kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                        "true".into(),
                    )),
                },
            )]
            .into(),
        });
        let got_off = secrets(&c.fetch_secrets(off).await.unwrap().into_inner());
        let secret::Type::ValidationContext(v) = &got_off["ROOTCA"] else {
            panic!("{got_off:?}")
        };
        assert_eq!(pem_ders(&inline(&v.trusted_ca)), own_roots);

        // incremental SDS is not served
        let (_txd, rxd) = mpsc::channel(1);
        let e = c.delta_secrets(ReceiverStream::new(rxd)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");

        // the first stream is still being served
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), inbound.message()).await;
    });
    let log = a.log();
    assert!(
        log.contains("test: bad secret"),
        "the NACK is logged:\n{log}"
    );
}

/// A caller no entry matches gets the bundle (public) but no SVID.
#[test]
fn sds_gives_no_svid_to_a_caller_without_entries() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/envoy-node2");
    let a = TestAgent::start(&s, &token);
    let sock = a.socket.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    runtime().block_on(async move {
        let mut c = SecretDiscoveryServiceClient::new(channel(&sock).await);
        // no entry matches this caller: asking for an SVID is refused
        let e = c
            .fetch_secrets(request(&["default"], "", "", 30))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        // the trust bundle is public: given once the agent has it
        loop {
            match c.fetch_secrets(request(&["ROOTCA"], "", "", 30)).await {
                Ok(r) => {
                    assert_eq!(secrets(&r.into_inner()).len(), 1);
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}
