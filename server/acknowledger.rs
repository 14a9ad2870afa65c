//! Acknowledges purchases for the apps whose `acknowledge` policy is
//! `after_verify` or `before_deadline`, so that no valid purchase passes
//! Google's 3-day deadline (after which Google refunds it) unacknowledged.
//!
//! The ledger keeps what is due ([`ledger::DueAcknowledgement`]); every
//! replica runs this loop, and each due purchase is leased to one of them at
//! a time, so each is acknowledged by one. An acknowledgement goes through
//! the service's own Acknowledge, so it is recorded (history, event) as a
//! backend's would be, and one the backend made first settles it too.

use std::time::Duration;

use tonic::{Code, Request};

use crate::ledger::{self, DueAcknowledgement, Ledger};
use crate::pb;
use crate::pb::purchase_service_server::PurchaseService;
use crate::service::PurchaseApi;

/// How often the ledger is asked for what is due (another replica's
/// purchases, and `before_deadline` ones, which no Verify wakes this for).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How many due purchases one replica takes at once.
const TAKE: i64 = 16;

/// How long a taken purchase stays this replica's: well beyond a store call
/// (calls end at their deadline), so that no other replica takes it meanwhile.
const LEASE: Duration = Duration::from_secs(120);

/// Each store call's own time limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The wait before trying a failed acknowledgement again: doubling from
/// 30 s, at most an hour.
fn retry_in(attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 7)).unwrap_or(7);
    Duration::from_secs(30 * 2u64.pow(exponent)).min(Duration::from_secs(3600))
}

/// Runs until `shutdown` resolves.
pub(crate) async fn run(api: PurchaseApi, ledger: Ledger, shutdown: tokio::sync::watch::Receiver<bool>) {
    let woken = ledger.acknowledgements_due();
    let mut shutdown = shutdown;
    loop {
        // Registered before the sweep, so that a Verify during it wakes the next.
        let notified = woken.notified();
        let taken = sweep(&api, &ledger).await;
        if taken == TAKE as usize {
            continue;
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Acknowledges one lot of due purchases; how many it took.
async fn sweep(api: &PurchaseApi, ledger: &Ledger) -> usize {
    let due = match ledger.take_due_acknowledgements(TAKE, LEASE).await {
        Ok(due) => due,
        Err(err) => {
            tracing::warn!(%err, "cannot read the acknowledgements due");
            return 0;
        }
    };
    let taken = due.len();
    for purchase in due {
        acknowledge(api, ledger, purchase).await;
    }
    taken
}

async fn acknowledge(api: &PurchaseApi, ledger: &Ledger, due: DueAcknowledgement) {
    let purchase_id = due.purchase_id.clone();
    if ledger::now_ms() > due.deadline_ms {
        tracing::warn!(purchase_id, store = due.store, "an acknowledgement was not made before its deadline");
        if let Err(err) = ledger.abandon_acknowledgement(&purchase_id, "its deadline passed").await {
            tracing::warn!(%err, purchase_id, "cannot record an abandoned acknowledgement");
        }
        return;
    }
    let mut request = Request::new(pb::AcknowledgeRequest {
        store: due.store.clone(),
        app_id: due.app_id,
        product_id: due.product_id,
        proof: Some(due.proof),
        developer_payload: String::new(),
    });
    // The deadline the call layer gives every call, which the service and
    // the plugin end the call at.
    request.extensions_mut().insert(crate::layers::CallDeadline(std::time::Instant::now() + CALL_TIMEOUT));
    request.extensions_mut().insert(crate::auth::Caller::Internal);
    let failure = match api.acknowledge(request).await {
        Ok(_) => {
            tracing::info!(purchase_id, store = due.store, "acknowledged a purchase for its app's policy");
            return;
        }
        Err(status) => status,
    };
    let outcome = match failure.code() {
        // The store says the purchase cannot be acknowledged (canceled,
        // refunded, not this app's): trying again would not change that.
        Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument => {
            tracing::warn!(purchase_id, store = due.store, code = ?failure.code(), message = failure.message(),
                "the store refused an acknowledgement; it is not tried again");
            ledger.abandon_acknowledgement(&purchase_id, failure.message()).await
        }
        code => {
            let wait = retry_in(due.attempts);
            tracing::warn!(
                purchase_id,
                store = due.store,
                ?code,
                message = failure.message(),
                retry_in_s = wait.as_secs(),
                "an acknowledgement failed; it is tried again"
            );
            ledger.acknowledgement_failed(&purchase_id, failure.message(), wait).await
        }
    };
    if let Err(err) = outcome {
        tracing::warn!(%err, purchase_id, "cannot record how an acknowledgement went");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_an_hour() {
        let waits: Vec<u64> = (0..10).map(|attempts| retry_in(attempts).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
    }
}
