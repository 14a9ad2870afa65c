//! Checks most store plugins make on a request before asking the store.

use crate::{PluginError, proto};

/// The purchase token of `proof`, or INVALID_ARGUMENT `UNSUPPORTED_PROOF` for
/// a store (named `store` in the message) that verifies only tokens.
pub fn purchase_token<'a>(proof: Option<&'a proto::Proof>, store: &str) -> Result<&'a str, PluginError> {
    match proof.and_then(|proof| proof.kind.as_ref()) {
        Some(proto::proof::Kind::PurchaseToken(token)) if !token.is_empty() => Ok(token),
        _ => Err(PluginError::invalid_argument(format!("proof: {store} verifies a `purchase_token`"))
            .with_reason("UNSUPPORTED_PROOF")),
    }
}

/// PERMISSION_DENIED `PACKAGE_NOT_ALLOWED` unless `app_id` is one of the
/// packages the store's config (`packages`) lists, so nothing is asked of
/// the store for an app its credentials should not serve.
pub fn allowed_package(packages: &[String], app_id: &str) -> Result<(), PluginError> {
    if packages.iter().any(|allowed| allowed == app_id) {
        return Ok(());
    }
    Err(PluginError::permission_denied(format!(
        "app_id: package `{app_id}` is not one this store serves (config `packages`)"
    ))
    .with_reason("PACKAGE_NOT_ALLOWED"))
}

/// INVALID_ARGUMENT naming `stores.<store_id>.config.packages` if the config
/// lists no packages: a store that serves no app is a configuration mistake.
pub fn packages_listed(packages: &[String], store_id: &str) -> Result<(), PluginError> {
    if packages.is_empty() {
        return Err(PluginError::invalid_argument(format!(
            "config key `stores.{store_id}.config.packages`: list the package names this store serves"
        )));
    }
    Ok(())
}

/// INVALID_ARGUMENT `UNKNOWN_STORE_PARAMETER` if `proof.store_parameters`
/// has a key not in `allowed`, so a caller can pass a store only the extras
/// the plugin reads, never one that steers a request (a URL, a host). The
/// message names the first unknown key (in sorted order), the keys allowed
/// and `hint`, which says why the list is what it is.
pub fn known_store_parameters(proof: Option<&proto::Proof>, allowed: &[&str], hint: &str) -> Result<(), PluginError> {
    let Some(proof) = proof else { return Ok(()) };
    let mut unknown: Vec<&String> =
        proof.store_parameters.keys().filter(|key| !allowed.contains(&key.as_str())).collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(key) => {
            let allowed = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
            Err(PluginError::invalid_argument(format!(
                "proof.store_parameters: `{key}` is not one this store reads (allowed: {allowed}); {hint}"
            ))
            .with_reason("UNKNOWN_STORE_PARAMETER"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::known_store_parameters;
    use crate::{Code, proto};

    #[test]
    fn unknown_store_parameters_are_refused_by_name() {
        let proof = |keys: &[&str]| proto::Proof {
            store_parameters: keys.iter().map(|key| ((*key).to_owned(), "v".to_owned())).collect(),
            ..Default::default()
        };
        assert!(known_store_parameters(None, &["a"], "").is_ok());
        assert!(known_store_parameters(Some(&proof(&[])), &[], "").is_ok());
        assert!(known_store_parameters(Some(&proof(&["a", "b"])), &["a", "b"], "").is_ok());
        let err = known_store_parameters(Some(&proof(&["a", "url", "host"])), &["a"], "urls come from the config")
            .expect_err("unknown keys");
        assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "UNKNOWN_STORE_PARAMETER"));
        assert_eq!(
            err.message(),
            "proof.store_parameters: `host` is not one this store reads (allowed: a); urls come from the config"
        );
        let err = known_store_parameters(Some(&proof(&["x"])), &[], "").expect_err("none allowed");
        assert!(err.message().contains("(allowed: none)"), "{err}");
    }
}
