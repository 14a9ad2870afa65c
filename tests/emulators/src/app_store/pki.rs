//! The emulator's own certificate authority, shaped like Apple's: a P-384
//! root, an intermediate with Apple's marker extension
//! 1.2.840.113635.100.6.2.1, and a P-256 leaf with 1.2.840.113635.100.6.11.1
//! that signs the transactions (ES256, the chain in the JWS's `x5c`).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

/// Apple's marker on the certificates that sign App Store data.
pub const LEAF_MARKER: &[u64] = &[1, 2, 840, 113_635, 100, 6, 11, 1];
/// Apple's marker on the Worldwide Developer Relations intermediate.
pub const INTERMEDIATE_MARKER: &[u64] = &[1, 2, 840, 113_635, 100, 6, 2, 1];

/// How to make a chain; the default is a chain Apple could have made. The
/// other settings make the flawed chains verification must refuse.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    /// The leaf carries [`LEAF_MARKER`].
    pub leaf_marker: bool,
    /// The intermediate carries [`INTERMEDIATE_MARKER`].
    pub intermediate_marker: bool,
    /// The leaf's validity, unix seconds (default: 2020-01-01 to 2040-01-01).
    pub leaf_validity: (i64, i64),
    /// The root's common name.
    pub root_name: String,
}

impl Default for ChainOptions {
    fn default() -> ChainOptions {
        ChainOptions {
            leaf_marker: true,
            intermediate_marker: true,
            leaf_validity: (1_577_836_800, 2_208_988_800),
            root_name: "iapd Emulator Root CA - G3".to_owned(),
        }
    }
}

/// A root → intermediate → leaf chain and the leaf's signing key.
pub struct SigningChain {
    root: Vec<u8>,
    intermediate: Vec<u8>,
    leaf: Vec<u8>,
    leaf_key: EcdsaKeyPair,
}

impl std::fmt::Debug for SigningChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningChain").finish_non_exhaustive()
    }
}

impl SigningChain {
    /// A chain Apple could have made, with fresh keys.
    pub fn generate() -> SigningChain {
        SigningChain::with_options(&ChainOptions::default())
    }

    /// A chain made as `options` say, with fresh keys.
    pub fn with_options(options: &ChainOptions) -> SigningChain {
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("p-384 key generation");
        let mut root = ca_params(&options.root_name);
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_cert = root.self_signed(&root_key).expect("self-signed root");
        let root_issuer = Issuer::new(root, root_key);

        let intermediate_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("p-384 key generation");
        let mut intermediate = ca_params("iapd Emulator Worldwide Developer Relations Certification Authority");
        intermediate.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        // OpenSSL's strict mode (Apple's Python library) demands it, as Apple's certificates have it.
        intermediate.use_authority_key_identifier_extension = true;
        if options.intermediate_marker {
            intermediate.custom_extensions.push(marker(INTERMEDIATE_MARKER));
        }
        let intermediate_cert =
            intermediate.signed_by(&intermediate_key, &root_issuer).expect("intermediate signed by the root");
        let intermediate_issuer = Issuer::new(intermediate, intermediate_key);

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("p-256 key generation");
        let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("no subject alt names");
        leaf.distinguished_name = name("iapd Emulator Prod ECC Mac App Store and iTunes Store Receipt Signing");
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.use_authority_key_identifier_extension = true;
        leaf.not_before = datetime(options.leaf_validity.0);
        leaf.not_after = datetime(options.leaf_validity.1);
        if options.leaf_marker {
            leaf.custom_extensions.push(marker(LEAF_MARKER));
        }
        let leaf_cert = leaf.signed_by(&leaf_key, &intermediate_issuer).expect("leaf signed by the intermediate");
        let signing_key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &leaf_key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("rcgen's p-256 key is pkcs#8");
        SigningChain {
            root: root_cert.der().to_vec(),
            intermediate: intermediate_cert.der().to_vec(),
            leaf: leaf_cert.der().to_vec(),
            leaf_key: signing_key,
        }
    }

    /// The root, in PEM: what a verifier must trust.
    pub fn root_pem(&self) -> String {
        let body = STANDARD.encode(&self.root);
        let lines: Vec<&str> =
            body.as_bytes().chunks(64).map(|chunk| std::str::from_utf8(chunk).unwrap_or_default()).collect();
        format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
    }

    /// The root, DER.
    pub fn root_der(&self) -> &[u8] {
        &self.root
    }

    /// `x5c` as Apple sends it: leaf, intermediate, root, standard base64.
    pub fn x5c(&self) -> Vec<String> {
        [&self.leaf, &self.intermediate, &self.root].map(|der| STANDARD.encode(der)).to_vec()
    }

    /// Signs `payload` as Apple does: `{"alg":"ES256","x5c":[…]}`.
    pub fn sign(&self, payload: &Value) -> String {
        self.sign_with_header(&json!({"alg": "ES256", "x5c": self.x5c()}), payload)
    }

    /// Signs `payload` under any header (tests make wrong ones).
    pub fn sign_with_header(&self, header: &Value, payload: &Value) -> String {
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(payload.to_string()));
        let signature = self
            .leaf_key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .expect("ecdsa signing does not fail");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "iapd emulator");
    name.push(DnType::CountryName, "US");
    name
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no subject alt names");
    params.distinguished_name = name(common_name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = datetime(1_388_534_400); // 2014-01-01
    params.not_after = datetime(2_524_608_000); // 2050-01-01
    params
}

/// Apple's markers are non-critical extensions whose value is DER NULL.
fn marker(oid: &[u64]) -> CustomExtension {
    CustomExtension::from_oid_content(oid, vec![0x05, 0x00])
}

fn datetime(unix_secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_secs).expect("a representable date")
}
