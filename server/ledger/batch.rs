//! Group commit of Verifies: one writer per ledger records every Verify that
//! arrives while its previous commit is in flight, in one transaction with a
//! fixed number of statements whatever the batch's size (each statement takes
//! the whole batch as one JSON parameter), so a batch pays one write lock,
//! one sequence update and one flush. Every Verify is answered after the
//! commit that holds it, so durability is what it was with one transaction
//! each.
//!
//! The claims of a batch are decided in memory, in arrival order, over the
//! rows as the transaction read (and on PostgreSQL locked) them: a purchase
//! twice in one batch is decided as two transactions one after the other
//! would decide it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::{Backend, Claim, LedgerError, Recorded, begin};
use crate::config::ClaimPolicy;

/// The most Verifies one commit records; beyond it the next batch waits.
const MAX_BATCH: usize = 256;

/// How many Verifies may wait for the writer; a caller beyond it waits to
/// queue, within its own deadline.
pub(super) const QUEUE: usize = 4096;

/// How often a batch that lost a PostgreSQL deadlock to another replica's is
/// tried again before its callers get the error.
const DEADLOCK_RETRIES: usize = 3;

/// One Verify to record, owned so that it can wait for the writer.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) purchase_id: String,
    pub(super) store: String,
    pub(super) app_id: String,
    pub(super) product_id: String,
    pub(super) store_key: String,
    pub(super) proof_hash: String,
    pub(super) user_id: String,
    pub(super) verdict: &'static str,
    pub(super) state: &'static str,
    pub(super) environment: &'static str,
    pub(super) kind: &'static str,
    /// Whether the verdict lets a user own the purchase (valid, pending).
    pub(super) claimable: bool,
    pub(super) expiry_ms: Option<i64>,
    /// The store's description (protobuf, hex) when the store answered;
    /// `None` when the answer came from the ledger.
    pub(super) checked: Option<Option<String>>,
    pub(super) raw_store_response: String,
    pub(super) policy: ClaimPolicy,
    pub(super) reply: oneshot::Sender<Result<Recorded, LedgerError>>,
}

/// Starts the writer of `pool`; it stops when the last sender is dropped.
pub(super) fn spawn(
    pool: AnyPool,
    backend: Backend,
    events_written: std::sync::Arc<tokio::sync::Notify>,
) -> mpsc::Sender<Pending> {
    let (sender, mut queue) = mpsc::channel::<Pending>(QUEUE);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // A caller that gave up (its deadline passed) was answered
            // without a decision, so there is nothing to record for it.
            batch.retain(|pending: &Pending| !pending.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            tracing::debug!(verifies = batch.len(), "recording a batch");
            let outcome = write_retrying(&pool, backend, &batch).await;
            let outcomes: Vec<Result<Recorded, LedgerError>> = match outcome {
                Ok((recorded, wrote_events)) => {
                    if wrote_events {
                        events_written.notify_waiters();
                    }
                    recorded.into_iter().map(Ok).collect()
                }
                // One bad Verify must not fail the others: each alone.
                Err(_) if batch.len() > 1 => {
                    let mut each = Vec::with_capacity(batch.len());
                    for pending in &batch {
                        each.push(match write_retrying(&pool, backend, std::slice::from_ref(pending)).await {
                            Ok((mut recorded, wrote_events)) => {
                                if wrote_events {
                                    events_written.notify_waiters();
                                }
                                Ok(recorded.remove(0))
                            }
                            Err(error) => Err(error),
                        });
                    }
                    each
                }
                Err(error) => vec![Err(error)],
            };
            for (pending, outcome) in batch.drain(..).zip(outcomes) {
                let _ = pending.reply.send(outcome);
            }
        }
    });
    sender
}

async fn write_retrying(
    pool: &AnyPool,
    backend: Backend,
    batch: &[Pending],
) -> Result<(Vec<Recorded>, bool), LedgerError> {
    let mut tries = 0;
    loop {
        match write(pool, backend, batch).await {
            Err(Failed::Deadlock(_)) if tries < DEADLOCK_RETRIES => tries += 1,
            Err(Failed::Deadlock(error) | Failed::Other(error)) => return Err(error.into()),
            Ok(done) => return Ok(done),
        }
    }
}

enum Failed {
    /// PostgreSQL chose this transaction to break a deadlock (or a
    /// serialization failure): nothing was written, and trying again works.
    Deadlock(sqlx::Error),
    Other(sqlx::Error),
}

impl From<sqlx::Error> for Failed {
    fn from(error: sqlx::Error) -> Self {
        let retryable = error.as_database_error().and_then(|db| db.code()).is_some_and(|code| {
            // deadlock_detected, serialization_failure
            code == "40P01" || code == "40001"
        });
        if retryable { Failed::Deadlock(error) } else { Failed::Other(error) }
    }
}

impl From<LedgerError> for Failed {
    fn from(error: LedgerError) -> Self {
        Failed::Other(sqlx::Error::Protocol(error.to_string()))
    }
}

/// The statements of a batch, in each database's dialect: SQLite reads the
/// JSON parameter with `json_each`, PostgreSQL with `json_to_recordset`.
struct Statements {
    insert_purchases: &'static str,
    read_purchases: &'static str,
    read_shares: &'static str,
    update_purchases: &'static str,
    insert_history: &'static str,
    insert_shares: &'static str,
    insert_events: &'static str,
}

const SQLITE: Statements = Statements {
    // (SQLite needs the WHERE to tell the upsert's ON from a join's.)
    insert_purchases: "INSERT INTO purchases (purchase_id, store, app_id, product_id, store_key, proof_hash, \
        owner_user_id, verdict, state, environment, kind, first_seen_ms, last_seen_ms, raw_store_response) \
        SELECT json_extract(value, '$.purchase_id'), json_extract(value, '$.store'), json_extract(value, '$.app_id'), \
        json_extract(value, '$.product_id'), json_extract(value, '$.store_key'), json_extract(value, '$.proof_hash'), \
        NULL, json_extract(value, '$.verdict'), json_extract(value, '$.state'), json_extract(value, '$.environment'), \
        json_extract(value, '$.kind'), $2, $2, json_extract(value, '$.raw_store_response') \
        FROM json_each($1) WHERE true ON CONFLICT DO NOTHING RETURNING purchase_id",
    read_purchases: "SELECT purchase_id, first_seen_ms, owner_user_id, verdict, state FROM purchases \
        WHERE purchase_id IN (SELECT value FROM json_each($1))",
    read_shares: "SELECT s.purchase_id, s.user_id FROM purchase_shares AS s JOIN \
        (SELECT json_extract(value, '$[0]') AS purchase_id, json_extract(value, '$[1]') AS user_id FROM json_each($1)) \
        AS x ON s.purchase_id = x.purchase_id AND s.user_id = x.user_id",
    update_purchases: "UPDATE purchases SET last_seen_ms = x.last_seen_ms, expiry_ms = x.expiry_ms, \
        owner_user_id = x.owner_user_id, verdict = x.verdict, state = x.state, \
        store_checked_ms = CASE WHEN x.checked THEN x.last_seen_ms ELSE purchases.store_checked_ms END, \
        last_purchase = CASE WHEN x.checked THEN x.last_purchase ELSE purchases.last_purchase END, \
        raw_store_response = CASE WHEN x.checked THEN x.raw_store_response ELSE purchases.raw_store_response END \
        FROM (SELECT json_extract(value, '$.purchase_id') AS purchase_id, json_extract(value, '$.last_seen_ms') \
        AS last_seen_ms, json_extract(value, '$.expiry_ms') AS expiry_ms, json_extract(value, '$.owner_user_id') \
        AS owner_user_id, json_extract(value, '$.verdict') AS verdict, json_extract(value, '$.state') AS state, \
        json_extract(value, '$.checked') AS checked, json_extract(value, '$.last_purchase') AS last_purchase, \
        json_extract(value, '$.raw_store_response') AS raw_store_response FROM json_each($1)) AS x \
        WHERE purchases.purchase_id = x.purchase_id",
    // A purchase's history numbers go on from its highest, read in the same
    // statement (which sees the table as it was before it), plus the entry's
    // place among this batch's entries of that purchase.
    insert_history: "INSERT INTO purchase_history (purchase_id, seq, at_ms, change, detail) \
        SELECT x.purchase_id, COALESCE((SELECT MAX(h.seq) FROM purchase_history AS h \
        WHERE h.purchase_id = x.purchase_id), 0) + x.nth, $2, x.change, x.detail \
        FROM (SELECT json_extract(value, '$.purchase_id') AS purchase_id, json_extract(value, '$.nth') AS nth, \
        json_extract(value, '$.change') AS change, json_extract(value, '$.detail') AS detail FROM json_each($1)) AS x",
    insert_shares: "INSERT INTO purchase_shares (purchase_id, user_id, since_ms) \
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), $2 FROM json_each($1) WHERE true \
        ON CONFLICT DO NOTHING",
    insert_events: "INSERT INTO ledger_events (seq, at_ms, app_id, user_id, kind, purchase_id, detail) \
        SELECT json_extract(value, '$.seq'), $2, json_extract(value, '$.app_id'), json_extract(value, '$.user_id'), \
        json_extract(value, '$.kind'), json_extract(value, '$.purchase_id'), json_extract(value, '$.detail') \
        FROM json_each($1)",
};

const POSTGRES: Statements = Statements {
    // In id order, as every batch takes its rows, so that two replicas'
    // batches lock what they share in the same order.
    insert_purchases: "INSERT INTO purchases (purchase_id, store, app_id, product_id, store_key, proof_hash, \
        owner_user_id, verdict, state, environment, kind, first_seen_ms, last_seen_ms, raw_store_response) \
        SELECT x.purchase_id, x.store, x.app_id, x.product_id, x.store_key, x.proof_hash, NULL, x.verdict, x.state, \
        x.environment, x.kind, $2, $2, x.raw_store_response FROM json_to_recordset($1::json) AS x(purchase_id text, \
        store text, app_id text, product_id text, store_key text, proof_hash text, verdict text, state text, \
        environment text, kind text, raw_store_response text) ORDER BY x.purchase_id \
        ON CONFLICT DO NOTHING RETURNING purchase_id",
    read_purchases: "SELECT purchase_id, first_seen_ms, owner_user_id, verdict, state FROM purchases \
        WHERE purchase_id IN (SELECT json_array_elements_text($1::json)) ORDER BY purchase_id FOR UPDATE",
    read_shares: "SELECT s.purchase_id, s.user_id FROM purchase_shares AS s JOIN \
        (SELECT value->>0 AS purchase_id, value->>1 AS user_id FROM json_array_elements($1::json)) AS x \
        ON s.purchase_id = x.purchase_id AND s.user_id = x.user_id",
    update_purchases: "UPDATE purchases AS p SET last_seen_ms = x.last_seen_ms, expiry_ms = x.expiry_ms, \
        owner_user_id = x.owner_user_id, verdict = x.verdict, state = x.state, \
        store_checked_ms = CASE WHEN x.checked THEN x.last_seen_ms ELSE p.store_checked_ms END, \
        last_purchase = CASE WHEN x.checked THEN x.last_purchase ELSE p.last_purchase END, \
        raw_store_response = CASE WHEN x.checked THEN x.raw_store_response ELSE p.raw_store_response END \
        FROM json_to_recordset($1::json) AS x(purchase_id text, last_seen_ms bigint, expiry_ms bigint, \
        owner_user_id text, verdict text, state text, checked boolean, last_purchase text, raw_store_response text) \
        WHERE p.purchase_id = x.purchase_id",
    insert_history: "INSERT INTO purchase_history (purchase_id, seq, at_ms, change, detail) \
        SELECT x.purchase_id, COALESCE((SELECT MAX(h.seq) FROM purchase_history AS h \
        WHERE h.purchase_id = x.purchase_id), 0) + x.nth, $2, x.change, x.detail \
        FROM json_to_recordset($1::json) AS x(purchase_id text, nth bigint, change text, detail text)",
    insert_shares: "INSERT INTO purchase_shares (purchase_id, user_id, since_ms) \
        SELECT value->>0, value->>1, $2 FROM json_array_elements($1::json) ON CONFLICT DO NOTHING",
    insert_events: "INSERT INTO ledger_events (seq, at_ms, app_id, user_id, kind, purchase_id, detail) \
        SELECT x.seq, $2, x.app_id, x.user_id, x.kind, x.purchase_id, x.detail \
        FROM json_to_recordset($1::json) AS x(seq bigint, app_id text, user_id text, kind text, \
        purchase_id text, detail text)",
};

#[derive(Serialize)]
struct NewPurchase<'a> {
    purchase_id: &'a str,
    store: &'a str,
    app_id: &'a str,
    product_id: &'a str,
    store_key: &'a str,
    proof_hash: &'a str,
    verdict: &'a str,
    state: &'a str,
    environment: &'a str,
    kind: &'a str,
    raw_store_response: &'a str,
}

/// A purchase's row after the batch.
#[derive(Serialize)]
struct PurchaseRow<'a> {
    purchase_id: &'a str,
    last_seen_ms: i64,
    expiry_ms: Option<i64>,
    owner_user_id: Option<String>,
    verdict: String,
    state: String,
    checked: bool,
    last_purchase: Option<&'a str>,
    raw_store_response: &'a str,
}

#[derive(Serialize)]
struct HistoryEntry<'a> {
    purchase_id: &'a str,
    nth: i64,
    change: &'static str,
    detail: String,
}

#[derive(Serialize)]
struct EventEntry<'a> {
    seq: i64,
    app_id: &'a str,
    user_id: &'a str,
    kind: &'static str,
    purchase_id: &'a str,
    detail: String,
}

/// A purchase as the batch's earlier Verifies left it.
struct Current<'a> {
    first_seen_ms: i64,
    owner: Option<String>,
    verdict: String,
    state: String,
    /// Whether a Verify before this one saw it: false for one this batch
    /// inserted, until its first Verify is decided.
    seen: bool,
    row: Option<PurchaseRow<'a>>,
    history: i64,
}

fn json<T: Serialize>(value: &T) -> Result<String, Failed> {
    serde_json::to_string(value)
        .map_err(|err| Failed::Other(sqlx::Error::Protocol(format!("cannot encode a ledger batch: {err}"))))
}

/// Records `batch` in one transaction: the Verifies' answers, in order, and
/// whether it wrote events.
async fn write(pool: &AnyPool, backend: Backend, batch: &[Pending]) -> Result<(Vec<Recorded>, bool), Failed> {
    let sql = match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    };
    let now = super::now_ms();
    let mut tx = begin(pool, backend).await?;

    // Every purchase of the batch, in id order, as its first Verify saw it.
    let mut first: BTreeMap<&str, &Pending> = BTreeMap::new();
    for pending in batch {
        first.entry(&pending.purchase_id).or_insert(pending);
    }
    let new: Vec<NewPurchase<'_>> = first
        .values()
        .map(|p| NewPurchase {
            purchase_id: &p.purchase_id,
            store: &p.store,
            app_id: &p.app_id,
            product_id: &p.product_id,
            store_key: &p.store_key,
            proof_hash: &p.proof_hash,
            verdict: p.verdict,
            state: p.state,
            environment: p.environment,
            kind: p.kind,
            raw_store_response: &p.raw_store_response,
        })
        .collect();
    let inserted: HashSet<String> = sqlx::query(sql.insert_purchases)
        .bind(json(&new)?)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>("purchase_id"))
        .collect::<Result<_, _>>()?;
    let ids: Vec<&str> = first.keys().copied().collect();
    let mut current: HashMap<&str, Current<'_>> = HashMap::with_capacity(ids.len());
    for row in sqlx::query(sql.read_purchases).bind(json(&ids)?).fetch_all(&mut *tx).await? {
        let purchase_id: String = row.try_get("purchase_id")?;
        let Some((&id, _)) = first.get_key_value(purchase_id.as_str()) else { continue };
        current.insert(
            id,
            Current {
                first_seen_ms: row.try_get("first_seen_ms")?,
                owner: row.try_get("owner_user_id")?,
                verdict: row.try_get("verdict")?,
                state: row.try_get("state")?,
                seen: !inserted.contains(id),
                row: None,
                history: 0,
            },
        );
    }

    // Whom the purchases others own are already shared with, for the users
    // of this batch.
    let asked: Vec<(&str, &str)> = batch
        .iter()
        .filter(|p| p.claimable && !p.user_id.is_empty() && !inserted.contains(&p.purchase_id))
        .filter(|p| current.get(p.purchase_id.as_str()).is_some_and(|c| c.owner.is_some()))
        .map(|p| (p.purchase_id.as_str(), p.user_id.as_str()))
        .collect();
    let mut shares: HashSet<(String, String)> = HashSet::new();
    if !asked.is_empty() {
        for row in sqlx::query(sql.read_shares).bind(json(&asked)?).fetch_all(&mut *tx).await? {
            shares.insert((row.try_get("purchase_id")?, row.try_get("user_id")?));
        }
    }

    let mut recorded = Vec::with_capacity(batch.len());
    let mut history: Vec<HistoryEntry<'_>> = Vec::new();
    let mut events: Vec<(&Pending, &'static str, String)> = Vec::new();
    let mut new_shares: Vec<(&str, &str)> = Vec::new();
    for pending in batch {
        let id = pending.purchase_id.as_str();
        let Some(purchase) = current.get_mut(id) else {
            return Err(Failed::Other(sqlx::Error::RowNotFound));
        };
        let mut note = |purchase: &mut Current<'_>, change: &'static str, detail: String| {
            purchase.history += 1;
            history.push(HistoryEntry { purchase_id: id, nth: purchase.history, change, detail });
        };
        let seen_before = purchase.seen;
        if !seen_before {
            note(purchase, "recorded", format!("verdict {}, state {}", pending.verdict, pending.state));
        } else if purchase.verdict != pending.verdict || purchase.state != pending.state {
            let change = format!(
                "verdict {} -> {}, state {} -> {}",
                purchase.verdict, pending.verdict, purchase.state, pending.state
            );
            note(purchase, "state_changed", change.clone());
            events.push((pending, "state_changed", change));
        }
        purchase.seen = true;
        purchase.verdict = pending.verdict.to_owned();
        purchase.state = pending.state.to_owned();

        let user = pending.user_id.as_str();
        let claim = if !pending.claimable {
            Claim::NotClaimable
        } else if user.is_empty() {
            Claim::NoUser
        } else {
            match purchase.owner.clone() {
                None => {
                    purchase.owner = Some(user.to_owned());
                    note(purchase, "claimed", format!("by {user}"));
                    events.push((pending, "claimed", String::new()));
                    Claim::New
                }
                Some(owner) if owner == user => Claim::Owner,
                Some(owner) => {
                    let shared = shares.contains(&(id.to_owned(), user.to_owned()));
                    match (shared, pending.policy) {
                        (true, _) => Claim::Shared,
                        (false, ClaimPolicy::Reject) => Claim::ClaimedByOther,
                        (false, ClaimPolicy::Transfer) => {
                            purchase.owner = Some(user.to_owned());
                            note(purchase, "transferred", format!("from {owner} to {user}"));
                            events.push((pending, "transferred", String::new()));
                            Claim::Transferred
                        }
                        (false, ClaimPolicy::Share) => {
                            shares.insert((id.to_owned(), user.to_owned()));
                            new_shares.push((id, user));
                            note(purchase, "shared", format!("with {user}"));
                            events.push((pending, "shared", String::new()));
                            Claim::Shared
                        }
                    }
                }
            }
        };
        let checked = pending.checked.is_some();
        let keep = purchase.row.take().filter(|_| !checked);
        purchase.row = Some(PurchaseRow {
            purchase_id: id,
            last_seen_ms: now,
            expiry_ms: pending.expiry_ms,
            owner_user_id: purchase.owner.clone(),
            verdict: purchase.verdict.clone(),
            state: purchase.state.clone(),
            // A later Verify the ledger answered keeps an earlier one's store
            // answer of this batch.
            checked: checked || keep.as_ref().is_some_and(|row| row.checked),
            last_purchase: match &pending.checked {
                Some(described) => described.as_deref(),
                None => keep.as_ref().and_then(|row| row.last_purchase),
            },
            raw_store_response: if checked {
                &pending.raw_store_response
            } else {
                keep.as_ref().map_or("", |row| row.raw_store_response)
            },
        });
        recorded.push(Recorded {
            purchase_id: pending.purchase_id.clone(),
            first_seen_ms: purchase.first_seen_ms,
            seen_before,
            claim,
        });
    }

    let rows: Vec<&PurchaseRow<'_>> = current.values().filter_map(|purchase| purchase.row.as_ref()).collect();
    sqlx::query(sql.update_purchases).bind(json(&rows)?).execute(&mut *tx).await?;
    if !history.is_empty() {
        sqlx::query(sql.insert_history).bind(json(&history)?).bind(now).execute(&mut *tx).await?;
    }
    if !new_shares.is_empty() {
        sqlx::query(sql.insert_shares).bind(json(&new_shares)?).bind(now).execute(&mut *tx).await?;
    }
    let wrote_events = !events.is_empty();
    if wrote_events {
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        // The batch's numbers at once; the row stays locked to the commit, so
        // numbers commit in order on every replica.
        let last: i64 =
            sqlx::query("UPDATE ledger_sequence SET value = value + $1 WHERE name = 'events' RETURNING value")
                .bind(count)
                .fetch_one(&mut *tx)
                .await?
                .try_get("value")?;
        let entries: Vec<EventEntry<'_>> = events
            .into_iter()
            .zip(last - count + 1..)
            .map(|((pending, kind, detail), seq)| EventEntry {
                seq,
                app_id: &pending.app_id,
                user_id: &pending.user_id,
                kind,
                purchase_id: &pending.purchase_id,
                detail,
            })
            .collect();
        sqlx::query(sql.insert_events).bind(json(&entries)?).bind(now).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok((recorded, wrote_events))
}
