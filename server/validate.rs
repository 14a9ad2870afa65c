//! Request limits: every field is bounded, and a violation names the field.

use crate::error::ApiError;
use crate::pb;

/// Longest store id, app id, product id, user id.
const MAX_ID: usize = 256;
/// Longest purchase token, transaction id, purchase id, developer payload.
const MAX_TOKEN: usize = 4096;
/// Longest signed transaction (a JWS with its certificate chain).
const MAX_SIGNED_TRANSACTION: usize = 64 * 1024;
/// Longest legacy receipt (base64).
const MAX_RECEIPT: usize = 1024 * 1024;
const MAX_STORE_PARAMETERS: usize = 32;
const MAX_PARAMETER_KEY: usize = 64;
const MAX_PARAMETER_VALUE: usize = 4096;
const MAX_PAGE_SIZE: i32 = 1000;
const MAX_PAGE_TOKEN: usize = 2048;

fn invalid(field: &str, description: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument { field: field.to_owned(), description: description.into() }
}

fn bounded(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(invalid(field, format!("is {} bytes, at most {max} allowed", value.len())));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

fn required(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    bounded(field, value, max)
}

pub(crate) fn store(value: &str) -> Result<(), ApiError> {
    required("store", value, 64)
}

pub(crate) fn app_id(value: &str) -> Result<(), ApiError> {
    required("app_id", value, MAX_ID)
}

pub(crate) fn app_and_product(app_id: &str, product_id: &str) -> Result<(), ApiError> {
    self::app_id(app_id)?;
    required("product_id", product_id, MAX_ID)
}

pub(crate) fn proof(proof: Option<&pb::PurchaseProof>) -> Result<(), ApiError> {
    use pb::purchase_proof::Proof;
    let Some(proof) = proof else { return Err(invalid("proof", "is required")) };
    match &proof.proof {
        None => {
            return Err(invalid(
                "proof",
                "one of purchase_token, transaction_id, signed_transaction, receipt or purchase_id is required",
            ));
        }
        Some(Proof::PurchaseToken(value)) => required("proof.purchase_token", value, MAX_TOKEN)?,
        Some(Proof::TransactionId(value)) => required("proof.transaction_id", value, MAX_ID)?,
        Some(Proof::SignedTransaction(value)) => required("proof.signed_transaction", value, MAX_SIGNED_TRANSACTION)?,
        Some(Proof::Receipt(value)) => required("proof.receipt", value, MAX_RECEIPT)?,
        Some(Proof::PurchaseId(value)) => required("proof.purchase_id", value, MAX_TOKEN)?,
    }
    if proof.store_parameters.len() > MAX_STORE_PARAMETERS {
        return Err(invalid(
            "proof.store_parameters",
            format!("has {} entries, at most {MAX_STORE_PARAMETERS} allowed", proof.store_parameters.len()),
        ));
    }
    for (key, value) in &proof.store_parameters {
        required("proof.store_parameters (key)", key, MAX_PARAMETER_KEY)?;
        bounded(&format!("proof.store_parameters[{key}]"), value, MAX_PARAMETER_VALUE)?;
    }
    Ok(())
}

pub(crate) fn user_id(value: &str) -> Result<(), ApiError> {
    bounded("user_id", value, MAX_ID)
}

/// A ledger id (`pur_…`, `grt_…`): the prefix and 32 lowercase hex digits.
fn ledger_id(field: &str, value: &str, prefix: &str) -> Result<(), ApiError> {
    required(field, value, MAX_ID)?;
    let digits = value.strip_prefix(prefix).unwrap_or("");
    if digits.len() != 32 || !digits.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)) {
        return Err(invalid(field, format!("is not a ledger id (`{prefix}` and 32 hex digits)")));
    }
    Ok(())
}

pub(crate) fn purchase_id(value: &str) -> Result<(), ApiError> {
    ledger_id("purchase_id", value, "pur_")
}

pub(crate) fn grant_id(value: &str) -> Result<(), ApiError> {
    ledger_id("grant_id", value, "grt_")
}

/// The page size of ListPurchases: 0 is the default.
pub(crate) fn purchases_page(page_size: i32, page_token: &str) -> Result<(i64, String), ApiError> {
    if !(0..=200).contains(&page_size) {
        return Err(invalid("page_size", "must be between 0 and 200"));
    }
    let after = if page_token.is_empty() {
        String::new()
    } else {
        let after = page_token.strip_prefix("p1.").unwrap_or("");
        purchase_id(after).map_err(|_| invalid("page_token", "was not issued by this server for this listing"))?;
        after.to_owned()
    };
    Ok((if page_size == 0 { 50 } else { i64::from(page_size) }, after))
}

/// Event kinds, each one the ledger writes.
pub(crate) fn event_kinds(kinds: &[String]) -> Result<(), ApiError> {
    if let Some(kind) = kinds.iter().find(|kind| !crate::ledger::EVENT_KINDS.contains(&kind.as_str())) {
        let known = crate::ledger::EVENT_KINDS.join(", ");
        return Err(invalid(
            "kinds",
            format!("`{}` is not an event kind ({known})", kind.chars().take(64).collect::<String>()),
        ));
    }
    Ok(())
}

/// An event cursor (`e1.<number>`), or empty for the start; the number after it.
pub(crate) fn event_cursor(cursor: &str) -> Result<i64, ApiError> {
    if cursor.is_empty() {
        return Ok(0);
    }
    cursor
        .strip_prefix("e1.")
        .filter(|digits| !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| invalid("after_cursor", "was not issued by this server (`e1.` and a number)"))
}

/// A user id where one is required (grants, entitlements, purchases).
pub(crate) fn required_user_id(value: &str) -> Result<(), ApiError> {
    required("user_id", value, MAX_ID)
}

pub(crate) fn developer_payload(value: &str) -> Result<(), ApiError> {
    bounded("developer_payload", value, MAX_TOKEN)
}

pub(crate) fn paging(page_size: i32, page_token: &str) -> Result<(), ApiError> {
    if !(0..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(invalid("page_size", format!("must be between 0 and {MAX_PAGE_SIZE}")));
    }
    bounded("page_token", page_token, MAX_PAGE_TOKEN)
}

pub(crate) fn kind(value: i32) -> Result<(), ApiError> {
    pb::ProductKind::try_from(value).map(|_| ()).map_err(|_| invalid("kind", format!("{value} is not a ProductKind")))
}
