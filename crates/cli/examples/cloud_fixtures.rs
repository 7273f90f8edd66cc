//! Test fixtures for the confidential cloud node example (`examples/confidential-node`):
//! a simulated SEV-SNP VLEK chain (keys for the agent's simulated device, ARK/ASVK
//! certificates for the server's `test_roots`), a test CA standing in for AWS's regional
//! certificate, and a loopback IMDSv2 serving a signed instance identity document.
//!
//! `cloud_fixtures DIR [ACCOUNT REGION INSTANCE]` writes the files under DIR, then serves IMDS
//! until killed; its URL goes to `DIR/imds.url` once it is listening. Never for production.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ironpact_snp::simulate::{SimPlatform, SimulatedSnp};
use ironpact_testkit::{imds, keys};
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: cloud_fixtures DIR [ACCOUNT REGION INSTANCE]");
        std::process::exit(2);
    };
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let (account, region, instance) = (
        arg(1, "123456789012"),
        arg(2, "eu-west-1"),
        arg(3, "i-0abc1234def567890"),
    );
    let snp = dir.join("snp");
    std::fs::create_dir_all(&snp).unwrap();
    let (ark, asvk, vlek) = (
        keys::rsa_pkcs8().unwrap(),
        keys::rsa_pkcs8().unwrap(),
        keys::p384_pkcs8().unwrap(),
    );
    let platform = SimPlatform {
        product: ironpact_snp::Product::Milan,
        chip_id: [0x5a; 64],
        tcb: (4, 0, 24, 219),
    };
    let dev = SimulatedSnp::new_vlek(platform, &ark, &asvk, &vlek, 0, 4_000_000_000).unwrap();
    std::fs::write(snp.join("ark.pk8"), &ark).unwrap();
    std::fs::write(snp.join("asvk.pk8"), &asvk).unwrap();
    std::fs::write(snp.join("vlek.pk8"), &vlek).unwrap();
    let pem = |d: &[u8]| ironpact_spiffe::x509::certs_to_pem([d]);
    std::fs::write(snp.join("ark.pem"), pem(&dev.ark_der)).unwrap();
    std::fs::write(snp.join("asvk.pem"), pem(&dev.ask_der)).unwrap();

    let aws_dir = dir.join("aws");
    std::fs::create_dir_all(&aws_dir).unwrap();
    let ca = imds::AwsTestCa::create(&aws_dir, "aws-test-region");
    let doc = imds::document(&account, &region, &instance, "ami-0123456789abcdef0");
    let served = imds::Served {
        signature: ca.sign(&doc),
        document: doc,
    };
    let (_emulator, e) = imds::start("127.0.0.1:0", served).unwrap();
    std::fs::write(dir.join("imds.url"), &e.url).unwrap();
    println!(
        "IMDSv2 emulator at {} (instance {instance}); Ctrl-C ends it",
        e.url
    );
    loop {
        std::thread::park();
    }
}
