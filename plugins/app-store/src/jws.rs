//! Offline verification of Apple's signed data (public so it can be used and
//! benchmarked on its own): a JWS in compact form whose
//! header carries the signing certificate chain (`x5c`).
//!
//! The checks are those of Apple's own App Store Server Library, and a little
//! stricter:
//! - `alg` is ES256 and nothing else; a header with `crit` is refused.
//! - `x5c` holds exactly three certificates, leaf → intermediate → root, and
//!   the root is byte for byte one of the trusted roots (Apple Root CA - G3
//!   unless configured otherwise).
//! - The path leaf → intermediate → root is verified by webpki (signatures,
//!   basic constraints, names), at the payload's `signedDate`, and every
//!   certificate, the root included, is valid at that date.
//! - The leaf carries Apple's marker extension 1.2.840.113635.100.6.11.1 and
//!   the intermediate 1.2.840.113635.100.6.2.1.
//! - The signature verifies with the leaf's P-256 key.
//!
//! A verified chain is cached (keyed by its bytes), so the common case costs
//! one ES256 verification and two JSON parses; the validity window is checked
//! against each payload's own `signedDate` even on a cache hit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::Deserialize;
use webpki::{EndEntityCert, KeyPurposeIdIter, VerifiedPath};
use x509_cert::Certificate;
use x509_cert::der::Decode as _;
use x509_cert::der::asn1::ObjectIdentifier;

/// Apple Root CA - G3 (SHA-256 fingerprint 63:34:3A:BF:…:3E:91:79), the
/// root of every chain Apple signs App Store data with.
pub const APPLE_ROOT_CA_G3_PEM: &str = include_str!("AppleRootCA-G3.pem");

/// Apple's marker on the certificates that sign App Store data.
const LEAF_MARKER: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113635.100.6.11.1");
/// Apple's marker on the Worldwide Developer Relations intermediate.
const INTERMEDIATE_MARKER: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113635.100.6.2.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// Apple's chains are ECDSA throughout (a P-384 root and intermediate, a
/// P-256 leaf).
static CHAIN_ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
];

/// Verified chains kept; the cache is emptied when full (chains change
/// rarely: Apple rotates its leaf every year or two).
const CACHE_CAPACITY: usize = 64;

/// Why signed data was refused. Each becomes a verdict's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not a compact jws: {0}")]
    Malformed(String),
    #[error("header alg is {0:?}; apple signs with ES256 only")]
    Algorithm(String),
    #[error("x5c: {0}")]
    ChainMalformed(String),
    #[error("the certificate chain does not lead to a trusted root: {0}")]
    Untrusted(String),
    #[error("the {0} certificate lacks apple's marker extension {1}")]
    MissingMarker(&'static str, ObjectIdentifier),
    #[error("the {which} certificate is not valid at the signed date {signed}: valid from {from} to {until}")]
    OutsideValidity { which: &'static str, signed: String, from: String, until: String },
    #[error("the signature does not verify with the leaf certificate's key")]
    Signature,
}

impl Rejection {
    /// A stable name for the failure, for logs and tests.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "JWS_MALFORMED",
            Rejection::Algorithm(_) => "JWS_ALGORITHM",
            Rejection::ChainMalformed(_) => "CHAIN_MALFORMED",
            Rejection::Untrusted(_) => "CHAIN_UNTRUSTED",
            Rejection::MissingMarker(..) => "MARKER_OID_MISSING",
            Rejection::OutsideValidity { .. } => "CERTIFICATE_NOT_VALID",
            Rejection::Signature => "SIGNATURE_INVALID",
        }
    }
}

/// A root the configuration trusts.
struct Root {
    der: CertificateDer<'static>,
    anchor: TrustAnchor<'static>,
}

/// What a verified chain leaves to check for each payload.
#[derive(Debug, Clone)]
pub(crate) struct TrustedChain {
    /// The leaf's P-256 public key, an uncompressed point.
    leaf_key: Vec<u8>,
    /// Each certificate's name and validity (unix seconds).
    validity: [(&'static str, i64, i64); 3],
}

/// Verifies Apple's signed data against a set of trusted roots.
pub struct Verifier {
    roots: Vec<Root>,
    cache: Mutex<HashMap<[u8; 32], TrustedChain>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("roots", &self.roots.len()).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    x5c: Option<Vec<String>>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Signed {
    signed_date: Option<i64>,
}

impl Verifier {
    /// A verifier trusting `roots_pem` (PEM certificates); the error names
    /// the one that is not a certificate.
    pub fn new(roots_pem: &[String]) -> Result<Verifier, String> {
        let mut roots = Vec::new();
        for (index, pem) in roots_pem.iter().enumerate() {
            let der = pem_certificate(pem).ok_or_else(|| format!("entry {index} is not a pem certificate"))?;
            let der = CertificateDer::from(der);
            let anchor = webpki::anchor_from_trusted_cert(&der)
                .map_err(|err| format!("entry {index} is not a usable root certificate: {err}"))?
                .to_owned();
            roots.push(Root { der, anchor });
        }
        if roots.is_empty() {
            return Err("no root certificate".to_owned());
        }
        Ok(Verifier { roots, cache: Mutex::new(HashMap::new()) })
    }

    /// Verifies `jws` and returns its payload (JSON bytes).
    pub fn verify(&self, jws: &str) -> Result<Vec<u8>, Rejection> {
        let mut parts = jws.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::Malformed("expected three dot-separated parts".to_owned()));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD.decode(part).map_err(|_| Rejection::Malformed(format!("the {what} is not base64url")))
        };
        let header: Header = serde_json::from_slice(&decode(header_b64, "header")?)
            .map_err(|err| Rejection::Malformed(format!("the header is not a json object: {err}")))?;
        if header.alg != "ES256" {
            return Err(Rejection::Algorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(Rejection::Malformed("the header has `crit` extensions, which apple never sets".to_owned()));
        }
        let payload = decode(payload_b64, "payload")?;
        let signature = decode(signature_b64, "signature")?;
        let signed_date = serde_json::from_slice::<Signed>(&payload)
            .map_err(|err| Rejection::Malformed(format!("the payload is not a json object: {err}")))?
            .signed_date
            .ok_or_else(|| Rejection::Malformed("the payload has no signedDate".to_owned()))?;
        let chain = header.x5c.ok_or_else(|| Rejection::ChainMalformed("the header has no x5c".to_owned()))?;
        let trusted = self.trusted_chain(&chain, signed_date)?;
        let signing_input = &jws.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &trusted.leaf_key)
            .verify(signing_input, &signature)
            .map_err(|_| Rejection::Signature)?;
        Ok(payload)
    }

    /// The chain's leaf key, once the chain is verified at `signed_date_ms`.
    pub(crate) fn trusted_chain(&self, x5c: &[String], signed_date_ms: i64) -> Result<TrustedChain, Rejection> {
        let [leaf, intermediate, root] = x5c else {
            return Err(Rejection::ChainMalformed(format!(
                "holds {} certificates; apple sends exactly three (leaf, intermediate, root)",
                x5c.len()
            )));
        };
        let ders = [leaf, intermediate, root]
            .map(|encoded| STANDARD.decode(encoded).map_err(|_| Rejection::ChainMalformed("not base64".to_owned())));
        let [leaf, intermediate, root] = ders;
        let (leaf, intermediate, root) = (leaf?, intermediate?, root?);
        let key = {
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            for der in [&leaf, &intermediate, &root] {
                digest.update(&(der.len() as u64).to_be_bytes());
                digest.update(der);
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(digest.finish().as_ref());
            key
        };
        let signed_secs = signed_date_ms.div_euclid(1000);
        let cached = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned();
        if let Some(chain) = cached {
            check_validity(&chain, signed_secs)?;
            return Ok(chain);
        }
        let chain = self.verify_chain(&leaf, &intermediate, &root, signed_secs)?;
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, chain.clone());
        Ok(chain)
    }

    fn verify_chain(
        &self,
        leaf_der: &[u8],
        intermediate_der: &[u8],
        root_der: &[u8],
        signed_secs: i64,
    ) -> Result<TrustedChain, Rejection> {
        let parse = |der: &[u8], which: &str| {
            Certificate::from_der(der)
                .map_err(|err| Rejection::ChainMalformed(format!("the {which} is not an x.509 certificate: {err}")))
        };
        let (leaf, intermediate, root) =
            (parse(leaf_der, "leaf")?, parse(intermediate_der, "intermediate")?, parse(root_der, "root")?);
        let Some(trusted_root) = self.roots.iter().find(|trusted| trusted.der.as_ref() == root_der) else {
            return Err(Rejection::Untrusted(format!(
                "its root ({}) is not one of the trusted roots",
                root.tbs_certificate.subject
            )));
        };
        let chain = TrustedChain {
            leaf_key: leaf_p256_key(&leaf)?,
            validity: [("leaf", &leaf), ("intermediate", &intermediate), ("root", &root)]
                .map(|(which, cert)| (which, unix_secs(cert, true), unix_secs(cert, false))),
        };
        // Validity first, for a precise reason; webpki checks it again.
        check_validity(&chain, signed_secs)?;
        let time = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(signed_secs).unwrap_or(0)));
        let leaf_der = CertificateDer::from(leaf_der);
        let end_entity = EndEntityCert::try_from(&leaf_der)
            .map_err(|err| Rejection::ChainMalformed(format!("the leaf is not usable: {err}")))?;
        let intermediates = [CertificateDer::from(intermediate_der)];
        let through_intermediate = |path: &VerifiedPath<'_>| {
            // Not leaf → root directly: Apple's leaf is always issued by the intermediate.
            if path.intermediate_certificates().count() == 1 { Ok(()) } else { Err(webpki::Error::UnknownIssuer) }
        };
        end_entity
            .verify_for_usage(
                CHAIN_ALGORITHMS,
                std::slice::from_ref(&trusted_root.anchor),
                &intermediates,
                time,
                AnyPurpose,
                None,
                Some(&through_intermediate),
            )
            .map_err(|err| Rejection::Untrusted(describe(&err)))?;
        for (which, cert, marker) in
            [("leaf", &leaf, LEAF_MARKER), ("intermediate", &intermediate, INTERMEDIATE_MARKER)]
        {
            let marked = cert.tbs_certificate.extensions.iter().flatten().any(|extension| extension.extn_id == marker);
            if !marked {
                return Err(Rejection::MissingMarker(which, marker));
            }
        }
        Ok(chain)
    }
}

/// Apple's certificates carry the extended key usages Apple chose; the
/// marker extensions, not EKUs, say what a certificate signs.
struct AnyPurpose;

impl webpki::ExtendedKeyUsageValidator for AnyPurpose {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        // Still reject a malformed EKU extension.
        for purpose in iter {
            purpose?;
        }
        Ok(())
    }
}

fn describe(err: &webpki::Error) -> String {
    match err {
        webpki::Error::UnknownIssuer => "no path leaf → intermediate → trusted root".to_owned(),
        webpki::Error::InvalidSignatureForPublicKey => {
            "a certificate's signature does not verify with its issuer's key".to_owned()
        }
        other => format!("{other:?}"),
    }
}

fn check_validity(chain: &TrustedChain, signed_secs: i64) -> Result<(), Rejection> {
    for (which, from, until) in chain.validity {
        if signed_secs < from || signed_secs > until {
            return Err(Rejection::OutsideValidity {
                which,
                signed: rfc3339(signed_secs),
                from: rfc3339(from),
                until: rfc3339(until),
            });
        }
    }
    Ok(())
}

fn unix_secs(cert: &Certificate, not_before: bool) -> i64 {
    let validity = &cert.tbs_certificate.validity;
    let time = if not_before { validity.not_before } else { validity.not_after };
    i64::try_from(time.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

fn rfc3339(unix_secs: i64) -> String {
    u64::try_from(unix_secs)
        .ok()
        .and_then(|secs| x509_cert::der::DateTime::from_unix_duration(Duration::from_secs(secs)).ok())
        .map_or_else(|| format!("{unix_secs} (unix seconds)"), |date| date.to_string())
}

fn leaf_p256_key(leaf: &Certificate) -> Result<Vec<u8>, Rejection> {
    let info = &leaf.tbs_certificate.subject_public_key_info;
    let curve =
        info.algorithm.parameters.as_ref().and_then(|parameters| parameters.decode_as::<ObjectIdentifier>().ok());
    if info.algorithm.oid != EC_PUBLIC_KEY || curve != Some(P256) {
        return Err(Rejection::ChainMalformed("the leaf's key is not an ec p-256 key, which es256 needs".to_owned()));
    }
    info.subject_public_key
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| Rejection::ChainMalformed("the leaf's key is not a whole number of bytes".to_owned()))
}

/// The DER of the first certificate in `pem`.
pub(crate) fn pem_certificate(pem: &str) -> Option<Vec<u8>> {
    let body = pem.split("-----BEGIN CERTIFICATE-----").nth(1)?.split("-----END CERTIFICATE-----").next()?;
    let base64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD.decode(base64).ok()?;
    Certificate::from_der(&der).ok().map(|_| der)
}
