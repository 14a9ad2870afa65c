//! Huawei's signature over purchase data: RSA with SHA-256 over the exact
//! string Huawei returned, PKCS#1 v1.5 (`SHA256WithRSA`, the default) or PSS
//! (`SHA256WithRSA/PSS`), as the answer's `signatureAlgorithm` says.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};

/// `signatureAlgorithm` values Huawei documents.
pub(crate) const PKCS1: &str = "SHA256WithRSA";
pub(crate) const PSS: &str = "SHA256WithRSA/PSS";

/// The OID of `rsaEncryption`, the only key type Huawei issues.
const RSA_ENCRYPTION: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Why a public key or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignatureError {
    #[error("the public key is not base64")]
    KeyNotBase64,
    #[error("the public key is not an x.509 subjectpublickeyinfo")]
    KeyNotSpki,
    #[error("the public key is not an rsa key")]
    KeyNotRsa,
    #[error("dataSignature is not base64")]
    SignatureNotBase64,
    #[error("the {0} signature does not verify with the app's public key")]
    Mismatch(&'static str),
}

/// The app's IAP public key.
#[derive(Debug, Clone)]
pub(crate) struct PublicKey {
    /// The PKCS#1 `RSAPublicKey` inside the SubjectPublicKeyInfo, as ring takes it.
    rsa: Vec<u8>,
}

impl PublicKey {
    /// The key as AppGallery Connect shows it: Base64 of the DER
    /// SubjectPublicKeyInfo (whitespace, PEM armour lines included, ignored).
    pub(crate) fn from_base64(text: &str) -> Result<PublicKey, SignatureError> {
        let compact: String = text
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
            .collect();
        let der = BASE64.decode(compact).map_err(|_| SignatureError::KeyNotBase64)?;
        let info = spki::SubjectPublicKeyInfoRef::try_from(der.as_slice()).map_err(|_| SignatureError::KeyNotSpki)?;
        if info.algorithm.oid != RSA_ENCRYPTION {
            return Err(SignatureError::KeyNotRsa);
        }
        let rsa = info.subject_public_key.as_bytes().ok_or(SignatureError::KeyNotSpki)?.to_vec();
        Ok(PublicKey { rsa })
    }

    /// Checks `signature` (Base64) over the bytes of `data` with `algorithm`,
    /// which the caller has checked is [`PKCS1`] or [`PSS`]. PSS is checked with
    /// MGF1-SHA-256 and a 32-byte salt, the defaults of the Java signature
    /// name Huawei uses.
    pub(crate) fn verify(&self, data: &str, signature: &str, algorithm: &'static str) -> Result<(), SignatureError> {
        let signature = BASE64.decode(signature.trim()).map_err(|_| SignatureError::SignatureNotBase64)?;
        let scheme: &'static dyn ring::signature::VerificationAlgorithm =
            if algorithm == PSS { &RSA_PSS_2048_8192_SHA256 } else { &RSA_PKCS1_2048_8192_SHA256 };
        UnparsedPublicKey::new(scheme, &self.rsa)
            .verify(data.as_bytes(), &signature)
            .map_err(|_| SignatureError::Mismatch(algorithm))
    }
}

#[cfg(test)]
mod tests {
    use super::{PublicKey, SignatureError};

    #[test]
    fn keys_that_are_not_base64_spki_rsa_are_refused_by_kind() {
        let fixture = include_str!("../../../tests/fixtures/huawei/iap-public-key.txt");
        assert!(PublicKey::from_base64(fixture).is_ok());
        let armoured = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", fixture.trim());
        assert!(PublicKey::from_base64(&armoured).is_ok(), "pem armour is tolerated");
        assert_eq!(PublicKey::from_base64("not base64!").unwrap_err(), SignatureError::KeyNotBase64);
        assert_eq!(PublicKey::from_base64("AAECAw==").unwrap_err(), SignatureError::KeyNotSpki);
        // An EC P-256 SubjectPublicKeyInfo: well-formed, but not RSA.
        let ec = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9q9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==";
        assert_eq!(PublicKey::from_base64(ec).unwrap_err(), SignatureError::KeyNotRsa);
    }
}
