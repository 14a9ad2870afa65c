//! Faults an emulator serves instead of its normal answers.

use std::time::Duration;

use serde::Deserialize;

use crate::Response;

/// A fault served instead of (or, with only a delay, before) the normal answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// The operation it hits (`token`, `products.get`, `products.acknowledge`,
    /// `products.consume`, … as each emulator names them); all if absent.
    #[serde(default)]
    pub operation: Option<String>,
    /// The HTTP status to answer with; the normal answer if absent.
    #[serde(default)]
    pub status: Option<u16>,
    /// The store's reason string (a default per status if absent).
    #[serde(default)]
    pub reason: Option<String>,
    /// A `Retry-After` header, in seconds.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// Waits this long before answering.
    #[serde(default)]
    pub delay_ms: u64,
    /// Answers a truncated, malformed JSON body instead of an envelope.
    #[serde(default)]
    pub malformed: bool,
    /// How many requests it hits (1 if absent or 0).
    #[serde(default)]
    pub times: u32,
}

impl Fault {
    /// A fault that answers `operation` once with `status` and `reason` (the
    /// store's default reason for the status if empty).
    pub fn answering(operation: &str, status: u16, reason: &str) -> Fault {
        Fault {
            operation: Some(operation.to_owned()),
            status: Some(status),
            reason: (!reason.is_empty()).then(|| reason.to_owned()),
            ..Fault::default()
        }
    }

    /// The answer to serve, or `None` when the fault only delays the normal
    /// answer. `error` builds the store's error body for a status and reason.
    pub fn answer(&self, error: impl FnOnce(u16, Option<&str>) -> Response) -> Option<Response> {
        let status = self.status?;
        let mut response = if self.malformed {
            let mut response = Response::json(status, &serde_json::Value::Null);
            response.body = b"{\"purchaseState\": 0, \"consumptionSt".to_vec();
            response
        } else {
            error(status, self.reason.as_deref())
        };
        if let Some(seconds) = self.retry_after_secs {
            response.headers.push(("retry-after".to_owned(), seconds.to_string()));
        }
        response.delay = self.delay();
        Some(response)
    }

    /// How long to wait before answering.
    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms)
    }
}

/// The faults queued on one emulator, hitting requests in order.
#[derive(Debug, Default)]
pub struct Faults(Vec<Fault>);

impl Faults {
    /// Queues a fault.
    pub fn inject(&mut self, fault: Fault) {
        self.0.push(fault);
    }

    /// The first fault for `operation`, used up after `times` hits.
    pub fn take(&mut self, operation: &str) -> Option<Fault> {
        let index =
            self.0.iter().position(|fault| fault.operation.as_deref().is_none_or(|wanted| wanted == operation))?;
        let fault = &mut self.0[index];
        if fault.times > 1 {
            fault.times -= 1;
            Some(fault.clone())
        } else {
            Some(self.0.remove(index))
        }
    }
}
