//! TLS for the listener: the server's certificate from PEM files, optional
//! mutual TLS against a client CA, and the files read again when they
//! change, so a renewed certificate needs no restart.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use x509_cert::der::Decode as _;

use crate::auth::ClientNames;
use crate::config::{ClientCertificates, ConfigError, TlsConfig};

/// The TLS settings in force, replaced whole when the files change.
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    /// The files, for [`Tls::watch`].
    config: TlsConfig,
}

impl Tls {
    /// Reads the files; an error names the key of the file at fault.
    pub(crate) fn load(config: &TlsConfig) -> Result<Tls, ConfigError> {
        Ok(Tls { current: Arc::new(RwLock::new(server_config(config)?)), config: config.clone() })
    }

    /// An acceptor with the settings in force now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Checks the files every `reload_interval` and loads them again when
    /// one changed; settings that do not load are logged and the old ones
    /// kept. Runs until the returned task is aborted.
    pub(crate) fn watch(&self) -> Option<tokio::task::JoinHandle<()>> {
        let config = self.config.clone();
        if config.reload_interval.is_zero() {
            return None;
        }
        let current = self.current.clone();
        Some(tokio::spawn(async move {
            let mut seen = stamps(&config);
            loop {
                tokio::time::sleep(config.reload_interval).await;
                let now = stamps(&config);
                if now == seen {
                    continue;
                }
                seen = now;
                match server_config(&config) {
                    Ok(loaded) => {
                        *current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
                        tracing::info!("tls: certificate files changed; new connections use them");
                    }
                    Err(err) => tracing::warn!(%err, "tls: the changed files do not load; keeping the previous ones"),
                }
            }
        }))
    }
}

/// When each file last changed, and its length.
fn stamps(config: &TlsConfig) -> Vec<Option<(SystemTime, u64)>> {
    [Some(&config.cert_file), Some(&config.key_file), config.client_ca_file.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| std::fs::metadata(path).ok().and_then(|meta| Some((meta.modified().ok()?, meta.len()))))
        .collect()
}

fn server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates("server.tls.cert_file", &config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|err| {
        ConfigError::new("server.tls.key_file", format!("no private key in `{}`: {err}", config.key_file.display()))
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| ConfigError::new("server.tls", err.to_string()))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("server.tls.client_ca_file", path)? {
                roots.add(cert).map_err(|err| {
                    ConfigError::new("server.tls.client_ca_file", format!("`{}`: {err}", path.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match config.client_certificates {
                ClientCertificates::Required => verifier,
                ClientCertificates::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|err| ConfigError::new("server.tls.client_ca_file", format!("`{}`: {err}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|err| {
        ConfigError::new("server.tls.key_file", format!("does not fit the certificate in server.tls.cert_file: {err}"))
    })?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(server))
}

fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| ConfigError::new(key, format!("cannot read certificates from `{}`: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(key, format!("`{}` holds no certificate", path.display())));
    }
    Ok(certs)
}

/// The names of a verified client certificate: its DNS subject alternative
/// names and its subject's common name, lowercase.
pub(crate) fn client_names(connection: &rustls::ServerConnection) -> Option<ClientNames> {
    let leaf = connection.peer_certificates()?.first()?;
    let cert = x509_cert::Certificate::from_der(leaf.as_ref()).ok()?;
    let mut names = Vec::new();
    for extension in cert.tbs_certificate.extensions.iter().flatten() {
        if extension.extn_id == x509_cert::der::oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME
            && let Ok(alt) = x509_cert::ext::pkix::SubjectAltName::from_der(extension.extn_value.as_bytes())
        {
            for name in alt.0 {
                if let x509_cert::ext::pkix::name::GeneralName::DnsName(dns) = name {
                    names.push(dns.as_str().to_ascii_lowercase());
                }
            }
        }
    }
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for attribute in rdn.0.iter() {
            if attribute.oid == x509_cert::der::oid::db::rfc4519::CN
                && let Ok(text) = std::str::from_utf8(attribute.value.value())
            {
                names.push(text.to_ascii_lowercase());
            }
        }
    }
    Some(ClientNames(Arc::new(names)))
}

/// How long a client has to finish its TLS handshake.
pub(crate) const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
