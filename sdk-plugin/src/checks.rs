//! Checks most store plugins make on a request before asking the store.

use std::collections::HashMap;

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

/// INVALID_ARGUMENT `UNKNOWN_STORE_PARAMETER` naming the first key (in
/// order) of a proof's `store_parameters` that is not one of `accepted`, so
/// a caller passes nothing the plugin does not read, and never a URL: the
/// URLs a store calls come only from the config. `why` ends the message,
/// saying what the accepted keys are for.
pub fn only_store_parameters(
    parameters: &HashMap<String, String>,
    accepted: &[&str],
    why: &str,
) -> Result<(), PluginError> {
    let mut unknown: Vec<&String> = parameters.keys().filter(|key| !accepted.contains(&key.as_str())).collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(key) => Err(PluginError::invalid_argument(format!(
            "proof.store_parameters: `{key}` is not accepted; only {} ({why})",
            accepted.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
        ))
        .with_reason("UNKNOWN_STORE_PARAMETER")),
    }
}

/// The non-empty value of `name` in a proof's `store_parameters`, or
/// INVALID_ARGUMENT `MISSING_STORE_PARAMETER`; `why` ends the message.
pub fn store_parameter<'a>(
    parameters: &'a HashMap<String, String>,
    name: &str,
    why: &str,
) -> Result<&'a str, PluginError> {
    parameters.get(name).map(String::as_str).filter(|value| !value.is_empty()).ok_or_else(|| {
        PluginError::invalid_argument(format!("proof.store_parameters: `{name}` is missing; {why}"))
            .with_reason("MISSING_STORE_PARAMETER")
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{only_store_parameters, store_parameter};
    use crate::Code;

    fn parameters(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn store_parameters_outside_the_allowlist_are_refused_by_name() {
        let given = parameters(&[("user_id", "u"), ("verify_url", "http://169.254.169.254/"), ("b", "")]);
        let err = only_store_parameters(&given, &["user_id"], "amazon binds receipts to users").unwrap_err();
        assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "UNKNOWN_STORE_PARAMETER"));
        assert_eq!(
            err.message(),
            "proof.store_parameters: `b` is not accepted; only `user_id` (amazon binds receipts to users)",
            "the first unknown key in order, whatever the map's order"
        );
        only_store_parameters(&parameters(&[("user_id", "u")]), &["user_id", "other"], "").unwrap();
        only_store_parameters(&HashMap::new(), &[], "").unwrap();
    }

    #[test]
    fn a_missing_or_empty_store_parameter_is_named() {
        let given = parameters(&[("user_id", "u-1"), ("empty", "")]);
        assert_eq!(store_parameter(&given, "user_id", "").unwrap(), "u-1");
        for name in ["empty", "absent"] {
            let err = store_parameter(&given, name, "amazon needs it").unwrap_err();
            assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "MISSING_STORE_PARAMETER"));
            assert_eq!(err.message(), format!("proof.store_parameters: `{name}` is missing; amazon needs it"));
        }
    }
}
