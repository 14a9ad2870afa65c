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
