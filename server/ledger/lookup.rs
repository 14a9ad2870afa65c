//! Batched reads of final purchases: every Verify first asks whether its
//! purchase is refunded, canceled or consumed (then the ledger answers and
//! the store is not asked). One reader per ledger takes every question that
//! arrived while its previous read was running and asks them in one
//! statement, so that a question costs a share of one round trip (and on
//! PostgreSQL of one plan), not one each.

use std::collections::BTreeSet;

use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::{Backend, LedgerError};

/// The most questions one read asks.
const MAX_BATCH: usize = 256;

/// Questions waiting for the reader beyond this wait to queue, within their
/// callers' deadlines.
const QUEUE: usize = 4096;

/// One Verify's question.
#[derive(Debug)]
pub(super) struct Lookup {
    pub(super) store: String,
    pub(super) app_id: String,
    pub(super) product_id: String,
    pub(super) proof_hash: String,
    /// Only a purchase the store answered for since then (unix millis).
    pub(super) checked_since: i64,
    pub(super) reply: oneshot::Sender<Result<Option<FinalRow>, LedgerError>>,
}

/// A purchase in a final state, as stored.
#[derive(Debug, Clone)]
pub(super) struct FinalRow {
    store: String,
    app_id: String,
    proof_hash: String,
    product_id: String,
    pub(super) verdict: String,
    pub(super) consumed_ms: Option<i64>,
    pub(super) acknowledged_ms: Option<i64>,
    pub(super) raw_store_response: String,
    pub(super) store_checked_ms: i64,
    pub(super) last_purchase: Option<String>,
}

impl FinalRow {
    fn answers(&self, lookup: &Lookup) -> bool {
        self.store == lookup.store
            && self.app_id == lookup.app_id
            && self.proof_hash == lookup.proof_hash
            && self.product_id == lookup.product_id
            && self.store_checked_ms >= lookup.checked_since
    }
}

const COLUMNS: &str = "p.store, p.app_id, p.proof_hash, p.product_id, p.verdict, p.consumed_ms, p.acknowledged_ms, \
     p.raw_store_response, p.store_checked_ms, p.last_purchase";

const FINAL: &str = "p.store_checked_ms IS NOT NULL \
     AND (p.verdict = 'VERDICT_REFUNDED' OR p.verdict = 'VERDICT_CANCELED' OR p.consumed_ms IS NOT NULL)";

/// Starts the reader of `pool`; it stops when the last sender is dropped.
pub(super) fn spawn(pool: AnyPool, backend: Backend) -> mpsc::Sender<Lookup> {
    let (sender, mut queue) = mpsc::channel::<Lookup>(QUEUE);
    // Each by the index on (store, app_id, proof_hash), the questions the
    // outer loop (SQLite's CROSS JOIN keeps that order).
    let statement = match backend {
        Backend::Sqlite => format!(
            "SELECT {COLUMNS} FROM json_each($1) AS x CROSS JOIN purchases AS p \
             WHERE p.store = json_extract(x.value, '$[0]') AND p.app_id = json_extract(x.value, '$[1]') \
             AND p.proof_hash = json_extract(x.value, '$[2]') AND {FINAL}"
        ),
        Backend::Postgres => format!(
            "SELECT {COLUMNS} FROM json_array_elements($1::json) AS x JOIN purchases AS p \
             ON p.store = x.value->>0 AND p.app_id = x.value->>1 AND p.proof_hash = x.value->>2 WHERE {FINAL}"
        ),
    };
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            batch.retain(|lookup: &Lookup| !lookup.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let keys: BTreeSet<[&str; 3]> =
                batch.iter().map(|lookup| [lookup.store.as_str(), &lookup.app_id, &lookup.proof_hash]).collect();
            let started = std::time::Instant::now();
            let rows = match serde_json::to_string(&keys) {
                Ok(keys) => read(&pool, &statement, keys).await,
                Err(err) => Err(LedgerError::Unavailable(format!("cannot encode a ledger lookup: {err}"))),
            };
            let took_us = started.elapsed().as_micros() as u64;
            tracing::debug!(lookups = batch.len(), took_us, "looked up a batch");
            for lookup in batch.drain(..) {
                let answer = match &rows {
                    Ok(rows) => Ok(rows.iter().find(|row| row.answers(&lookup)).cloned()),
                    Err(err) => Err(LedgerError::Unavailable(err.to_string())),
                };
                let _ = lookup.reply.send(answer);
            }
        }
    });
    sender
}

async fn read(pool: &AnyPool, statement: &str, keys: String) -> Result<Vec<FinalRow>, LedgerError> {
    let rows = sqlx::query(statement).bind(keys).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(FinalRow {
                store: row.try_get("store")?,
                app_id: row.try_get("app_id")?,
                proof_hash: row.try_get("proof_hash")?,
                product_id: row.try_get("product_id")?,
                verdict: row.try_get("verdict")?,
                consumed_ms: row.try_get("consumed_ms")?,
                acknowledged_ms: row.try_get("acknowledged_ms")?,
                raw_store_response: row.try_get("raw_store_response")?,
                store_checked_ms: row.try_get("store_checked_ms")?,
                last_purchase: row.try_get("last_purchase")?,
            })
        })
        .collect()
}
