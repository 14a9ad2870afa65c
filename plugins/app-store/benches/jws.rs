//! Offline verification of signed transactions, per core (one thread).
//!
//! `cargo bench -p iapd-plugin-app-store --bench jws`
//!
//! Baseline: one bare ES256 signature check of the same JWS with ring, the
//! floor any verifier pays. Measured: `Verifier::verify` with the chain cached
//! (the steady state: Apple signs with one chain for months), and with the
//! chain verified every time (a fresh verifier per call).

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use iapd_emulators::app_store::SigningChain;
use iapd_plugin_app_store::jws::Verifier;
use serde_json::json;

const ROUNDS: usize = 5;
const RUN: Duration = Duration::from_secs(2);

fn main() {
    let chain = SigningChain::generate();
    let jws = chain.sign(&json!({
        "transactionId": "2000000000000001",
        "originalTransactionId": "2000000000000001",
        "bundleId": "com.example.ios",
        "productId": "coins_100",
        "purchaseDate": 1_767_225_600_000i64,
        "quantity": 1,
        "type": "Consumable",
        "environment": "Production",
        "storefront": "USA",
        "signedDate": 1_767_225_600_000i64,
    }));
    let roots = vec![chain.root_pem()];
    let verifier = Verifier::new(&roots).unwrap();
    verifier.verify(&jws).unwrap();

    let (signing_input, signature) = jws.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let leaf_key = {
        // The leaf's key, taken the way the verifier takes it, outside the timing.
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jws.split('.').next().unwrap()).unwrap()).unwrap();
        let leaf = base64::engine::general_purpose::STANDARD.decode(header["x5c"][0].as_str().unwrap()).unwrap();
        x509_leaf_key(&leaf)
    };
    let bare = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, leaf_key);

    println!("offline JWS verification, one thread, best of {ROUNDS} rounds of {RUN:?}");
    let baseline = best(|| bare.verify(black_box(signing_input.as_bytes()), black_box(&signature)).unwrap());
    let cached = best(|| {
        black_box(verifier.verify(black_box(&jws)).unwrap());
    });
    let uncached = best(|| {
        let fresh = Verifier::new(&roots).unwrap();
        black_box(fresh.verify(black_box(&jws)).unwrap());
    });
    println!("{:<48} {:>10.0} /s   ratio", "path", "");
    println!("{:<48} {:>10.0} /s   1.00", "baseline: bare ES256 check (ring)", baseline);
    println!("{:<48} {:>10.0} /s   {:.2}", "Verifier::verify, chain cached", cached, cached / baseline);
    println!("{:<48} {:>10.0} /s   {:.2}", "Verifier::verify, chain verified each time", uncached, uncached / baseline);
}

/// Calls per second, the best of several rounds (the machine is shared).
fn best(mut work: impl FnMut()) -> f64 {
    let mut best: f64 = 0.0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut calls = 0u64;
        while started.elapsed() < RUN {
            for _ in 0..64 {
                work();
            }
            calls += 64;
        }
        best = best.max(calls as f64 / started.elapsed().as_secs_f64());
    }
    best
}

/// The leaf certificate's public key (an uncompressed P-256 point).
fn x509_leaf_key(der: &[u8]) -> Vec<u8> {
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes().to_vec()
}
