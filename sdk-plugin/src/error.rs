//! The error a plugin answers with when it could not decide.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::abi;
use crate::proto;

/// A gRPC status code, as the ABI carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Code {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// The ABI's integer for this code.
    pub fn to_status(self) -> abi::Status {
        use abi::status::*;
        match self {
            Code::Cancelled => CANCELLED,
            Code::Unknown => UNKNOWN,
            Code::InvalidArgument => INVALID_ARGUMENT,
            Code::DeadlineExceeded => DEADLINE_EXCEEDED,
            Code::NotFound => NOT_FOUND,
            Code::AlreadyExists => ALREADY_EXISTS,
            Code::PermissionDenied => PERMISSION_DENIED,
            Code::ResourceExhausted => RESOURCE_EXHAUSTED,
            Code::FailedPrecondition => FAILED_PRECONDITION,
            Code::Aborted => ABORTED,
            Code::OutOfRange => OUT_OF_RANGE,
            Code::Unimplemented => UNIMPLEMENTED,
            Code::Internal => INTERNAL,
            Code::Unavailable => UNAVAILABLE,
            Code::DataLoss => DATA_LOSS,
            Code::Unauthenticated => UNAUTHENTICATED,
        }
    }

    /// The code for an ABI integer; values this side does not know (and OK,
    /// which is no error) become `Unknown`.
    pub fn from_status(status: abi::Status) -> Code {
        use abi::status::*;
        match status {
            CANCELLED => Code::Cancelled,
            INVALID_ARGUMENT => Code::InvalidArgument,
            DEADLINE_EXCEEDED => Code::DeadlineExceeded,
            NOT_FOUND => Code::NotFound,
            ALREADY_EXISTS => Code::AlreadyExists,
            PERMISSION_DENIED => Code::PermissionDenied,
            RESOURCE_EXHAUSTED => Code::ResourceExhausted,
            FAILED_PRECONDITION => Code::FailedPrecondition,
            ABORTED => Code::Aborted,
            OUT_OF_RANGE => Code::OutOfRange,
            UNIMPLEMENTED => Code::Unimplemented,
            INTERNAL => Code::Internal,
            UNAVAILABLE => Code::Unavailable,
            DATA_LOSS => Code::DataLoss,
            UNAUTHENTICATED => Code::Unauthenticated,
            _ => Code::Unknown,
        }
    }
}

/// Why a plugin could not decide. Business outcomes (refunded, pending, not
/// found at the store) are verdicts, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    code: Code,
    message: String,
    reason: String,
    retryable: bool,
    retry_after: Option<Duration>,
    upstream_http_status: u16,
    metadata: BTreeMap<String, String>,
}

macro_rules! constructors {
    ($($name:ident => $code:ident),* $(,)?) => {
        $(
            #[doc = concat!("An error with code `", stringify!($code), "`.")]
            pub fn $name(message: impl Into<String>) -> Self {
                Self::new(Code::$code, message)
            }
        )*
    };
}

impl Code {
    /// The code for a store's considered refusal with HTTP `status` (400,
    /// 401, 403, 404; UNKNOWN for anything else).
    pub fn for_refusal(status: u16) -> Code {
        match status {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            _ => Code::Unknown,
        }
    }
}

impl PluginError {
    /// An error with `code` and a lowercase message with context.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        PluginError {
            code,
            message: message.into(),
            reason: String::new(),
            retryable: matches!(code, Code::Unavailable | Code::ResourceExhausted | Code::Aborted),
            retry_after: None,
            upstream_http_status: 0,
            metadata: BTreeMap::new(),
        }
    }

    constructors! {
        invalid_argument => InvalidArgument,
        not_found => NotFound,
        failed_precondition => FailedPrecondition,
        permission_denied => PermissionDenied,
        unauthenticated => Unauthenticated,
        resource_exhausted => ResourceExhausted,
        unavailable => Unavailable,
        deadline_exceeded => DeadlineExceeded,
        unimplemented => Unimplemented,
        internal => Internal,
        aborted => Aborted,
    }

    /// INTERNAL `UNEXPECTED_RESPONSE`: the store answered with HTTP `status`
    /// but not in its own shape (often a wrong API origin in the config).
    pub fn unexpected_response(status: u16, message: impl Into<String>) -> Self {
        Self::internal(message).with_reason("UNEXPECTED_RESPONSE").with_http_status(status)
    }

    /// INTERNAL `MALFORMED_RESPONSE`: the store answered with HTTP `status`
    /// in its own shape, but with a body or a value iapd cannot read, so it
    /// decides nothing on a guess.
    pub fn malformed_response(status: u16, message: impl Into<String>) -> Self {
        Self::internal(message).with_reason("MALFORMED_RESPONSE").with_http_status(status)
    }

    /// The store's own reason string; it becomes `ErrorInfo.reason`.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Says whether the same call may succeed later.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Retryable after `delay` (for example from a `Retry-After` header).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retryable = true;
        self.retry_after = Some(delay);
        self
    }

    /// The HTTP status the store answered with.
    pub fn with_http_status(mut self, status: u16) -> Self {
        self.upstream_http_status = status;
        self
    }

    /// A key/value for `ErrorInfo.metadata`.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The store's reason string, empty if none.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// How long to wait before retrying, when the store said so.
    pub fn retry_after_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The HTTP status the store answered with; 0 if none.
    pub fn http_status(&self) -> u16 {
        self.upstream_http_status
    }

    /// The `ErrorInfo.metadata` entries.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::PluginError {
        proto::PluginError {
            message: self.message.clone(),
            reason: self.reason.clone(),
            retryable: self.retryable,
            retry_after_millis: self.retry_after.map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX)),
            upstream_http_status: u32::from(self.upstream_http_status),
            metadata: self.metadata.clone().into_iter().collect(),
        }
    }

    /// Rebuilds an error from its wire form and status.
    pub fn from_proto(status: abi::Status, wire: proto::PluginError) -> Self {
        PluginError {
            code: Code::from_status(status),
            message: wire.message,
            reason: wire.reason,
            retryable: wire.retryable,
            retry_after: (wire.retry_after_millis > 0).then(|| Duration::from_millis(wire.retry_after_millis)),
            upstream_http_status: u16::try_from(wire.upstream_http_status).unwrap_or(0),
            metadata: wire.metadata.into_iter().collect(),
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)?;
        if !self.reason.is_empty() {
            write!(f, " (reason: {})", self.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for PluginError {}

impl From<prost::DecodeError> for PluginError {
    fn from(err: prost::DecodeError) -> Self {
        PluginError::invalid_argument(format!("malformed protobuf message: {err}"))
    }
}
