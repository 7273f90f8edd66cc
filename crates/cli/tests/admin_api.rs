//! The admin API called directly over gRPC with bad and edge-case input: precise statuses,
//! per-item batch results, pagination, and a server that keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::entry_service_client::EntryServiceClient;
use ironpact_proto::server::v1::svid_service_client::SvidServiceClient;
use support::{Backend, TestServer};
use tonic::Code;

fn entry(id: &str, sel: &str) -> pb::Entry {
    let (t, v) = sel.split_once(':').unwrap();
    pb::Entry {
        spiffe_id: id.into(),
        parent_id: "spiffe://example.org/node".into(),
        selectors: vec![pb::Selector {
            r#type: t.into(),
            value: v.into(),
        }],
        ..Default::default()
    }
}

fn csr(sans: Vec<rcgen::SanType>) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = sans;
    p.serialize_request(&key).unwrap().der().to_vec()
}

fn uri(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(rcgen::string::Ia5String::try_from(s.to_string()).unwrap())
}

#[test]
fn bad_and_edge_input_over_grpc() {
    let s = TestServer::start(Backend::Sqlite);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = ironpact_cli::common::connect_uds(&s.socket, "server", "-socketPath")
            .await
            .unwrap();
        let mut svid = SvidServiceClient::new(ch.clone());
        let mut entries = EntryServiceClient::new(ch.clone());

        // malformed CSRs
        for (bytes, want) in [
            (b"not a csr".to_vec(), "malformed CSR"),
            (vec![], "csr is required"),
            (csr(vec![]), "exactly one URI SAN"),
            (
                csr(vec![
                    uri("spiffe://example.org/a"),
                    uri("spiffe://example.org/b"),
                ]),
                "exactly one URI SAN",
            ),
            (csr(vec![uri("spiffe://example.org/a/")]), "trailing slash"),
        ] {
            let e = svid
                .mint_x509svid(pb::MintX509svidRequest { csr: bytes, ttl: 0 })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(want), "{e:?} should mention {want}");
        }
        let mut tampered = csr(vec![uri("spiffe://example.org/a")]);
        let n = tampered.len();
        tampered[n - 3] ^= 0x55;
        let e = svid
            .mint_x509svid(pb::MintX509svidRequest {
                csr: tampered,
                ttl: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = svid
            .mint_x509svid(pb::MintX509svidRequest {
                csr: csr(vec![uri("spiffe://example.org/a")]),
                ttl: -1,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = svid
            .mint_jwtsvid(pb::MintJwtsvidRequest {
                id: "spiffe://example.org/a".into(),
                audience: vec![],
                ttl: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);

        // a batch with good and bad items: a status per item
        let r = entries
            .batch_create_entry(pb::BatchCreateEntryRequest {
                entries: vec![
                    entry("spiffe://example.org/ok", "unix:uid:1"),
                    entry("not-an-id", "unix:uid:1"),
                    entry("spiffe://example.org/ok", "unix:uid:1"),
                    pb::Entry {
                        selectors: vec![],
                        ..entry("spiffe://example.org/x", "unix:uid:1")
                    },
                ],
            })
            .await
            .unwrap()
            .into_inner();
        let codes: Vec<i32> = r
            .results
            .iter()
            .map(|x| x.status.as_ref().unwrap().code)
            .collect();
        assert_eq!(
            codes,
            [
                Code::Ok as i32,
                Code::InvalidArgument as i32,
                Code::AlreadyExists as i32,
                Code::InvalidArgument as i32
            ]
        );
        assert_eq!(
            r.results[2].entry.as_ref().unwrap().id,
            r.results[0].entry.as_ref().unwrap().id,
            "AlreadyExists returns the existing entry"
        );

        // too many items in one batch, and an oversized message
        let many = (0..1001)
            .map(|i| entry(&format!("spiffe://example.org/m{i}"), "a:b"))
            .collect();
        let e = entries
            .batch_create_entry(pb::BatchCreateEntryRequest { entries: many })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("split the request"), "{e:?}");
        let mut huge = entry("spiffe://example.org/huge", "a:b");
        huge.hint = "x".repeat(5 << 20);
        let e = entries
            .batch_create_entry(pb::BatchCreateEntryRequest {
                entries: vec![huge],
            })
            .await
            .unwrap_err();
        assert_ne!(e.code(), Code::Ok);

        // pagination over sorted IDs
        for i in 0..5 {
            entries
                .batch_create_entry(pb::BatchCreateEntryRequest {
                    entries: vec![entry(&format!("spiffe://example.org/p{i}"), "page:1")],
                })
                .await
                .unwrap();
        }
        let filter = pb::EntryFilter {
            by_selectors: Some(pb::SelectorMatch {
                selectors: vec![pb::Selector {
                    r#type: "page".into(),
                    value: "1".into(),
                }],
                r#match: pb::MatchBehavior::MatchExact as i32,
            }),
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let r = entries
                .list_entries(pb::ListEntriesRequest {
                    filter: Some(filter.clone()),
                    page_size: 2,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            seen.extend(r.entries.into_iter().map(|e| e.id));
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        assert_eq!((seen.len(), pages), (5, 3));
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted);
        let e = entries
            .list_entries(pb::ListEntriesRequest {
                filter: None,
                page_size: -1,
                page_token: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);

        // an update mask changes only what it names
        let id = r.results[0].entry.as_ref().unwrap().id.clone();
        let r = entries
            .batch_update_entry(pb::BatchUpdateEntryRequest {
                entries: vec![pb::Entry {
                    id: id.clone(),
                    hint: "new hint".into(),
                    ..Default::default()
                }],
                input_mask: Some(pb::EntryMask {
                    hint: true,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let e = r.results[0].entry.as_ref().unwrap();
        assert_eq!(
            (e.hint.as_str(), e.spiffe_id.as_str(), e.revision_number),
            ("new hint", "spiffe://example.org/ok", 1)
        );
    });
    s.cli(&["healthcheck"]).expect_ok();
}
