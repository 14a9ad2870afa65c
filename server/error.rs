//! The one place where domain errors become gRPC statuses. Every status
//! carries `google.rpc.ErrorInfo` (domain "iapd" for the server's own errors,
//! the store id for a store's), plus `BadRequest` for invalid fields and
//! `RetryInfo` where waiting and retrying can succeed.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::host::CallError;

/// `ErrorInfo.domain` of errors raised by the server itself.
pub const DOMAIN: &str = "iapd";

/// Why an RPC could not decide.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// A request field is missing, too long or malformed.
    InvalidArgument {
        /// The field's path, such as `proof.purchase_token`.
        field: String,
        /// What is wrong.
        description: String,
    },
    /// No store has this id.
    UnknownStore {
        /// The id asked for.
        store: String,
        /// The ids served.
        known: Vec<String>,
    },
    /// The store's plugin does not offer the operation.
    Unsupported {
        /// The store id.
        store: String,
        /// The operation, such as "Acknowledge".
        operation: &'static str,
    },
    /// The plugin call produced no answer.
    Plugin {
        /// The store id.
        store: String,
        /// What happened.
        error: CallError,
    },
    /// The request's bytes are not a valid message: truncated, malformed
    /// protobuf, or a string field that is not UTF-8.
    MalformedRequest {
        /// The field's path, when the decoder knows it.
        field: Option<String>,
        /// The decoder's message.
        detail: String,
    },
    /// The request is over `server.max_message_bytes`.
    MessageTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body stopped before its end (the client reset the call).
    RequestIncomplete,
    /// No such method.
    UnknownMethod {
        /// The path asked for (bounded).
        path: String,
    },
    /// The server has `server.max_concurrent_requests` calls in flight.
    ServerOverloaded {
        /// The limit.
        limit: usize,
    },
    /// The call's deadline passed before it was answered, for example while
    /// its request was still arriving.
    CallDeadlineExceeded,
    /// The shutdown grace ended while the call was running.
    ShuttingDown,
    /// The ledger could not record the decision, so none is given.
    LedgerUnavailable {
        /// What the database said (logged, not sent).
        detail: String,
    },
    /// The ledger refused a grant.
    GrantRefused(crate::ledger::GrantRefusal),
    /// An RPC that needs the ledger, with `ledger.enabled = false`.
    LedgerDisabled {
        /// The RPC.
        operation: &'static str,
    },
    /// The caller is not known: no credential, or one that is not valid.
    Unauthenticated(AuthFailure),
    /// The caller's credential does not reach what the call asks for.
    PermissionDenied {
        /// `ErrorInfo.reason`: `RPC_NOT_PERMITTED`, `STORE_NOT_PERMITTED`, `APP_NOT_PERMITTED`.
        reason: &'static str,
        /// Names the credential and what it asked for, nothing else.
        message: String,
    },
    /// The plugin answered with something that does not decode.
    MalformedAnswer {
        /// The store id.
        store: String,
        /// The decoder's message.
        detail: String,
    },
}

/// Why a caller is not known. No variant holds what the caller sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No key and no client certificate.
    Missing,
    /// The credential metadata is not in a form iapd reads.
    Malformed(&'static str),
    /// No tenant has this key.
    UnknownKey,
    /// The key was revoked.
    RevokedKey {
        /// Its tenant.
        tenant: String,
        /// Its name.
        name: String,
    },
    /// The client certificate is valid, but no tenant's `clients` names it.
    UnmappedCertificate,
}

impl AuthFailure {
    fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "CREDENTIALS_MISSING",
            AuthFailure::Malformed(_) => "CREDENTIALS_MALFORMED",
            AuthFailure::UnknownKey => "API_KEY_INVALID",
            AuthFailure::RevokedKey { .. } => "API_KEY_REVOKED",
            AuthFailure::UnmappedCertificate => "CLIENT_CERTIFICATE_UNMAPPED",
        }
    }

    fn message(&self) -> String {
        match self {
            AuthFailure::Missing => "this server needs credentials: send an API key as `authorization: Bearer <key>` \
                                     (or `x-api-key`) metadata, or a client certificate"
                .to_owned(),
            AuthFailure::Malformed(what) => what.to_string(),
            AuthFailure::UnknownKey => "the API key is not valid here".to_owned(),
            AuthFailure::RevokedKey { tenant, name } => format!("the API key `{name}` of tenant `{tenant}` is revoked"),
            AuthFailure::UnmappedCertificate => {
                "the client certificate is not mapped to a tenant here (tenants.<name>.clients)".to_owned()
            }
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        match error {
            ApiError::InvalidArgument { field, description } => {
                let mut details = ErrorDetails::with_bad_request_violation(&field, &description);
                details.set_error_info(
                    "INVALID_ARGUMENT",
                    DOMAIN,
                    HashMap::from([("field".to_owned(), field.clone())]),
                );
                Status::with_error_details(Code::InvalidArgument, format!("{field}: {description}"), details)
            }
            ApiError::UnknownStore { store, known } => {
                let details = ErrorDetails::with_error_info(
                    "UNKNOWN_STORE",
                    DOMAIN,
                    HashMap::from([("store".to_owned(), store.clone()), ("loaded_stores".to_owned(), known.join(","))]),
                );
                Status::with_error_details(
                    Code::NotFound,
                    format!("store `{store}` is not served here; loaded stores: {}", known.join(", ")),
                    details,
                )
            }
            ApiError::Unsupported { store, operation } => {
                let details = ErrorDetails::with_error_info(
                    "OPERATION_NOT_SUPPORTED",
                    DOMAIN,
                    HashMap::from([
                        ("store".to_owned(), store.clone()),
                        ("operation".to_owned(), operation.to_owned()),
                    ]),
                );
                Status::with_error_details(
                    Code::Unimplemented,
                    format!("store `{store}` does not support {operation} (see ListStores for its capabilities)"),
                    details,
                )
            }
            ApiError::MalformedRequest { field, detail } => {
                let mut details = match &field {
                    Some(field) => ErrorDetails::with_bad_request_violation(field, &detail),
                    None => ErrorDetails::new(),
                };
                let metadata: HashMap<String, String> =
                    field.iter().map(|field| ("field".to_owned(), field.clone())).collect();
                details.set_error_info("MALFORMED_REQUEST", DOMAIN, metadata);
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("the request does not decode: {detail}"),
                    details,
                )
            }
            ApiError::MessageTooLarge { limit } => {
                let details = ErrorDetails::with_error_info(
                    "MESSAGE_TOO_LARGE",
                    DOMAIN,
                    HashMap::from([("limit_bytes".to_owned(), limit.to_string())]),
                );
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("the request is over {limit} bytes, the limit (server.max_message_bytes)"),
                    details,
                )
            }
            ApiError::RequestIncomplete => {
                let details = ErrorDetails::with_error_info("REQUEST_INCOMPLETE", DOMAIN, HashMap::new());
                Status::with_error_details(Code::Cancelled, "the request ended before its message did", details)
            }
            ApiError::UnknownMethod { path } => {
                let details = ErrorDetails::with_error_info(
                    "UNKNOWN_METHOD",
                    DOMAIN,
                    HashMap::from([("path".to_owned(), path.clone())]),
                );
                Status::with_error_details(Code::Unimplemented, format!("no method `{path}` is served here"), details)
            }
            ApiError::ServerOverloaded { limit } => {
                let mut details = ErrorDetails::with_error_info(
                    "SERVER_OVERLOADED",
                    DOMAIN,
                    HashMap::from([("limit".to_owned(), limit.to_string())]),
                );
                details.set_retry_info(Some(Duration::from_secs(1)));
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!("the server has {limit} calls in flight, its limit (server.max_concurrent_requests)"),
                    details,
                )
            }
            ApiError::CallDeadlineExceeded => {
                let details = ErrorDetails::with_error_info("DEADLINE_EXCEEDED", DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::DeadlineExceeded,
                    "the call was not answered before its deadline",
                    details,
                )
            }
            ApiError::ShuttingDown => {
                let mut details = ErrorDetails::with_error_info("SHUTTING_DOWN", DOMAIN, HashMap::new());
                details.set_retry_info(None);
                Status::with_error_details(
                    Code::Unavailable,
                    "the server is shutting down and its grace period ended before this call did; retry elsewhere",
                    details,
                )
            }
            ApiError::LedgerUnavailable { detail } => {
                tracing::error!(detail, "the ledger could not record a decision");
                let mut details = ErrorDetails::with_error_info("LEDGER_UNAVAILABLE", DOMAIN, HashMap::new());
                details.set_retry_info(Some(Duration::from_secs(1)));
                Status::with_error_details(
                    Code::Unavailable,
                    "the ledger is unavailable, so nothing was recorded and no verdict is given; retry",
                    details,
                )
            }
            ApiError::GrantRefused(refusal) => {
                use crate::ledger::GrantRefusal;
                let (code, reason) = match &refusal {
                    GrantRefusal::UnknownPurchase(_) => (Code::NotFound, "PURCHASE_NOT_IN_LEDGER"),
                    GrantRefusal::UnknownGrant(_) => (Code::NotFound, "GRANT_NOT_FOUND"),
                    GrantRefusal::NotOwner => (Code::PermissionDenied, "NOT_PURCHASE_OWNER"),
                    GrantRefusal::NotGrantable(_) => (Code::FailedPrecondition, "PURCHASE_NOT_GRANTABLE"),
                    GrantRefusal::ConsumedWithoutGrant => (Code::FailedPrecondition, "CONSUMED_WITHOUT_GRANT"),
                    GrantRefusal::RevokedGrant(_) => (Code::FailedPrecondition, "GRANT_REVOKED"),
                };
                let details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
                Status::with_error_details(code, refusal.to_string(), details)
            }
            ApiError::LedgerDisabled { operation } => {
                let details = ErrorDetails::with_error_info(
                    "LEDGER_DISABLED",
                    DOMAIN,
                    HashMap::from([("operation".to_owned(), operation.to_owned())]),
                );
                Status::with_error_details(
                    Code::FailedPrecondition,
                    format!("{operation} needs the ledger, and this server runs with ledger.enabled = false"),
                    details,
                )
            }
            ApiError::Unauthenticated(failure) => {
                let details = ErrorDetails::with_error_info(failure.reason(), DOMAIN, HashMap::new());
                Status::with_error_details(Code::Unauthenticated, failure.message(), details)
            }
            ApiError::PermissionDenied { reason, message } => {
                let details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
                Status::with_error_details(Code::PermissionDenied, message, details)
            }
            ApiError::Plugin { store, error } => plugin_status(store, error),
            ApiError::MalformedAnswer { store, detail } => {
                tracing::error!(store, detail, "plugin answered with a malformed message");
                let details = ErrorDetails::with_error_info("MALFORMED_PLUGIN_ANSWER", DOMAIN, store_metadata(&store));
                Status::with_error_details(
                    Code::Internal,
                    format!("store `{store}` answered with a malformed message"),
                    details,
                )
            }
        }
    }
}

fn plugin_status(store: String, error: CallError) -> Status {
    match error {
        CallError::Refused { status } => {
            let code = code_of(status);
            let details = ErrorDetails::with_error_info("PLUGIN_REFUSED_CALL", DOMAIN, store_metadata(&store));
            Status::with_error_details(code, format!("store `{store}` refused the call (status {status})"), details)
        }
        CallError::Failed { status, error } => {
            let code = code_of(status);
            let error = *error;
            let reason = if error.reason.is_empty() { format!("{code:?}").to_uppercase() } else { error.reason };
            let mut metadata: HashMap<String, String> = error.metadata.into_iter().collect();
            if error.upstream_http_status != 0 {
                metadata.insert("upstream_http_status".to_owned(), error.upstream_http_status.to_string());
            }
            let mut details = ErrorDetails::with_error_info(reason, store.clone(), metadata);
            if error.retryable {
                let delay = (error.retry_after_millis > 0).then(|| Duration::from_millis(error.retry_after_millis));
                details.set_retry_info(delay);
            }
            Status::with_error_details(code, format!("store `{store}`: {}", error.message), details)
        }
        CallError::DeadlineExceeded => {
            let details = ErrorDetails::with_error_info("DEADLINE_EXCEEDED", DOMAIN, store_metadata(&store));
            Status::with_error_details(
                Code::DeadlineExceeded,
                format!("store `{store}` did not answer before the deadline"),
                details,
            )
        }
        CallError::Overloaded { limit } => {
            let mut details = ErrorDetails::with_error_info("STORE_OVERLOADED", DOMAIN, store_metadata(&store));
            details.set_retry_info(Some(Duration::from_secs(1)));
            Status::with_error_details(
                Code::ResourceExhausted,
                format!("store `{store}` has {limit} calls in flight, its limit"),
                details,
            )
        }
        CallError::RateLimited { retry_after, limit } => {
            let mut details = ErrorDetails::with_error_info("STORE_QUOTA_EXHAUSTED", DOMAIN, store_metadata(&store));
            details.set_retry_info(Some(retry_after));
            Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "store `{store}`: its quota ({} calls per {} ms) has no room before the call's deadline; the next window begins in {} ms",
                    limit.requests,
                    limit.window.as_millis(),
                    retry_after.as_millis()
                ),
                details,
            )
        }
        CallError::CircuitOpen { retry_after, failures, calls } => {
            let mut details = ErrorDetails::with_error_info("STORE_CIRCUIT_OPEN", DOMAIN, store_metadata(&store));
            details.set_retry_info(Some(retry_after));
            let why = if calls > 0 {
                format!("{failures} of its last {calls} calls failed")
            } else {
                "a probe call is under way".to_owned()
            };
            Status::with_error_details(
                Code::Unavailable,
                format!("store `{store}` is failing ({why}): its calls fail fast until a probe is answered"),
                details,
            )
        }
        CallError::Internal(detail) => {
            tracing::error!(store, detail, "plugin call failed inside the host");
            let details = ErrorDetails::with_error_info("HOST_ERROR", DOMAIN, store_metadata(&store));
            Status::with_error_details(Code::Internal, format!("store `{store}`: internal error in the host"), details)
        }
    }
}

fn store_metadata(store: &str) -> HashMap<String, String> {
    HashMap::from([("store".to_owned(), store.to_owned())])
}

/// The gRPC code for an ABI status; OK (which is no error) and unknown
/// values become UNKNOWN.
pub fn code_of(status: i32) -> Code {
    match Code::from_i32(status) {
        Code::Ok => Code::Unknown,
        code => code,
    }
}
