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
    /// When the store says the purchase awaits an acknowledgement: by when.
    pub(super) ack_due_ms: Option<i64>,
    /// Set when the app has iapd acknowledge its purchases.
    pub(super) acknowledge: Option<AutoAcknowledge>,
    pub(super) policy: ClaimPolicy,
    pub(super) reply: oneshot::Sender<Result<Recorded, LedgerError>>,
}

/// What iapd needs to acknowledge a purchase itself.
#[derive(Debug)]
pub(super) struct AutoAcknowledge {
    /// The proof, as protobuf in hex: the store needs it, so it is kept
    /// until the acknowledgement is recorded.
    pub(super) proof: String,
    /// When to try first.
    pub(super) next_attempt_ms: i64,
}

/// Starts the writer of `pool`; it stops when the last sender is dropped.
pub(super) fn spawn(pool: AnyPool, backend: Backend, wake: Wake) -> mpsc::Sender<Pending> {
    let (sender, queue) = mpsc::channel::<Pending>(QUEUE);
    // One writer: SQLite has one write lock, and on PostgreSQL a second
    // writer measured no faster (BENCHMARKS.md (6)).
    tokio::spawn(run(pool, backend, wake, queue));
    sender
}

async fn run(pool: AnyPool, backend: Backend, wake: Wake, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        // A caller that gave up (its deadline passed) was answered
        // without a decision, so there is nothing to record for it.
        batch.retain(|pending: &Pending| !pending.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = write_retrying(&pool, backend, &batch).await;
        let took = started.elapsed();
        tracing::debug!(verifies = batch.len(), took_us = took.as_micros() as u64, "recorded a batch");
        let metrics = &crate::telemetry::METRICS;
        metrics.ledger_batch_size.record(batch.len() as u64, &[]);
        metrics.ledger_batch_duration.record(took.as_secs_f64(), &[]);
        let outcomes: Vec<Result<Recorded, LedgerError>> = match outcome {
            Ok(written) => wake.after(written).into_iter().map(Ok).collect(),
            // One Verify the database refuses must not fail the others:
            // each alone. (A database out of reach fails them all.)
            Err(sqlx::Error::Database(_)) if batch.len() > 1 => {
                let mut each = Vec::with_capacity(batch.len());
                for pending in &batch {
                    each.push(match write_retrying(&pool, backend, std::slice::from_ref(pending)).await {
                        Ok(written) => wake
                            .after(written)
                            .pop()
                            .ok_or_else(|| LedgerError::Unavailable("a batch of one recorded nothing".to_owned())),
                        Err(error) => Err(error.into()),
                    });
                }
                each
            }
            Err(error) => {
                let error = LedgerError::from(error);
                batch.iter().map(|_| Err(LedgerError::Unavailable(error.to_string()))).collect()
            }
        };
        for (pending, outcome) in batch.drain(..).zip(outcomes) {
            let _ = pending.reply.send(outcome);
        }
    }
}

/// Who is woken after a commit.
#[derive(Debug)]
pub(super) struct Wake {
    /// This replica's event subscribers.
    pub(super) events: std::sync::Arc<tokio::sync::Notify>,
    /// This replica's acknowledger.
    pub(super) acknowledgements: std::sync::Arc<tokio::sync::Notify>,
}

impl Wake {
    fn after(&self, written: Written) -> Vec<Recorded> {
        if written.wrote_events {
            self.events.notify_waiters();
        }
        if written.acknowledgements_due {
            self.acknowledgements.notify_one();
        }
        written.recorded
    }
}

/// What a committed batch did.
struct Written {
    /// Each Verify's answer, in order.
    recorded: Vec<Recorded>,
    wrote_events: bool,
    /// Whether it tracked an acknowledgement due now.
    acknowledgements_due: bool,
}

async fn write_retrying(pool: &AnyPool, backend: Backend, batch: &[Pending]) -> Result<Written, sqlx::Error> {
    let mut tries = 0;
    loop {
        match write(pool, backend, batch).await {
            Err(Failed::Deadlock(_)) if tries < DEADLOCK_RETRIES => tries += 1,
            Err(Failed::Deadlock(error) | Failed::Other(error)) => return Err(error),
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

/// The statements of a batch, in each database's dialect: SQLite reads the
/// JSON parameter with `json_each`, PostgreSQL with `json_to_recordset`.
/// Every row is found by its key (an upsert, or a key lookup), never by a
/// join the planner could turn into a scan of a growing table.
struct Statements {
    /// PostgreSQL: inserts the purchases not there yet and locks the others
    /// (an upsert that changes nothing), in id order, returning each row as
    /// it stands. SQLite, whose transaction holds the one write lock from its
    /// start: reads them.
    take_purchases: &'static str,
    read_shares: &'static str,
    /// Writes every purchase of the batch as the batch left it.
    write_purchases: &'static str,
    insert_history: &'static str,
    insert_shares: &'static str,
    revoke_grants: &'static str,
    track_acknowledgements: &'static str,
    insert_events: &'static str,
}

const SQLITE: Statements = Statements {
    take_purchases: "SELECT purchase_id, first_seen_ms, owner_user_id, verdict, state, history_count, \
        acknowledged_ms, consumed_ms, 0 AS inserted FROM purchases WHERE purchase_id IN (SELECT value FROM json_each($1))",
    read_shares: "SELECT s.purchase_id, s.user_id FROM json_each($1) AS x JOIN purchase_shares AS s \
        ON s.purchase_id = json_extract(x.value, '$[0]') AND s.user_id = json_extract(x.value, '$[1]')",
    // (SQLite needs the WHERE to tell the upsert's ON from a join's.)
    write_purchases: "INSERT INTO purchases (purchase_id, store, app_id, product_id, store_key, proof_hash, \
        owner_user_id, verdict, state, environment, kind, first_seen_ms, last_seen_ms, raw_store_response, expiry_ms, \
        store_checked_ms, last_purchase, history_count, ack_due_ms) \
        SELECT json_extract(value, '$.purchase_id'), json_extract(value, '$.store'), json_extract(value, '$.app_id'), \
        json_extract(value, '$.product_id'), json_extract(value, '$.store_key'), json_extract(value, '$.proof_hash'), \
        json_extract(value, '$.owner_user_id'), json_extract(value, '$.verdict'), json_extract(value, '$.state'), \
        json_extract(value, '$.environment'), json_extract(value, '$.kind'), $2, $2, \
        json_extract(value, '$.raw_store_response'), json_extract(value, '$.expiry_ms'), \
        json_extract(value, '$.store_checked_ms'), json_extract(value, '$.last_purchase'), \
        json_extract(value, '$.history_count'), json_extract(value, '$.ack_due_ms') FROM json_each($1) WHERE true \
        ON CONFLICT (purchase_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, expiry_ms = excluded.expiry_ms, \
        owner_user_id = excluded.owner_user_id, verdict = excluded.verdict, state = excluded.state, \
        history_count = excluded.history_count, \
        store_checked_ms = COALESCE(excluded.store_checked_ms, purchases.store_checked_ms), \
        last_purchase = CASE WHEN excluded.store_checked_ms IS NULL THEN purchases.last_purchase \
        ELSE excluded.last_purchase END, \
        raw_store_response = CASE WHEN excluded.store_checked_ms IS NULL THEN purchases.raw_store_response \
        ELSE excluded.raw_store_response END, \
        ack_due_ms = CASE WHEN excluded.store_checked_ms IS NULL THEN purchases.ack_due_ms \
        ELSE excluded.ack_due_ms END",
    insert_history: "INSERT INTO purchase_history (purchase_id, seq, at_ms, change, detail) \
        SELECT json_extract(value, '$.purchase_id'), json_extract(value, '$.seq'), $2, json_extract(value, '$.change'), \
        json_extract(value, '$.detail') FROM json_each($1)",
    insert_shares: "INSERT INTO purchase_shares (purchase_id, user_id, since_ms) \
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), $2 FROM json_each($1) WHERE true \
        ON CONFLICT DO NOTHING",
    revoke_grants: "UPDATE grants SET revoked_ms = $2 WHERE revoked_ms IS NULL \
        AND purchase_id IN (SELECT value FROM json_each($1)) RETURNING grant_id, purchase_id, user_id",
    track_acknowledgements: "INSERT INTO pending_acknowledgements (purchase_id, store, app_id, product_id, proof, \
        deadline_ms, next_attempt_ms, attempts, lease_until_ms, last_error) \
        SELECT json_extract(value, '$.purchase_id'), json_extract(value, '$.store'), json_extract(value, '$.app_id'), \
        json_extract(value, '$.product_id'), json_extract(value, '$.proof'), json_extract(value, '$.deadline_ms'), \
        json_extract(value, '$.next_attempt_ms'), 0, 0, '' FROM json_each($1) WHERE true ON CONFLICT DO NOTHING",
    insert_events: "INSERT INTO ledger_events (seq, at_ms, app_id, user_id, kind, purchase_id, detail) \
        SELECT json_extract(value, '$.seq'), $2, json_extract(value, '$.app_id'), json_extract(value, '$.user_id'), \
        json_extract(value, '$.kind'), json_extract(value, '$.purchase_id'), json_extract(value, '$.detail') \
        FROM json_each($1)",
};

const POSTGRES: Statements = Statements {
    // In id order, as every batch takes its rows, so that two replicas'
    // batches lock what they share in the same order. `xmax = 0` marks the
    // rows this statement inserted.
    take_purchases: "INSERT INTO purchases AS p (purchase_id, store, app_id, product_id, store_key, proof_hash, \
        owner_user_id, verdict, state, environment, kind, first_seen_ms, last_seen_ms, raw_store_response) \
        SELECT x.purchase_id, x.store, x.app_id, x.product_id, x.store_key, x.proof_hash, NULL, x.verdict, x.state, \
        x.environment, x.kind, $2, $2, '' FROM json_to_recordset($1::json) AS x(purchase_id text, store text, \
        app_id text, product_id text, store_key text, proof_hash text, verdict text, state text, environment text, \
        kind text) ORDER BY x.purchase_id \
        ON CONFLICT (purchase_id) DO UPDATE SET last_seen_ms = p.last_seen_ms \
        RETURNING purchase_id, first_seen_ms, owner_user_id, verdict, state, history_count, acknowledged_ms, \
        consumed_ms, (xmax = 0) AS inserted",
    read_shares: "SELECT s.purchase_id, s.user_id FROM json_array_elements($1::json) AS x \
        JOIN purchase_shares AS s ON s.purchase_id = x.value->>0 AND s.user_id = x.value->>1",
    write_purchases: "INSERT INTO purchases AS p (purchase_id, store, app_id, product_id, store_key, proof_hash, \
        owner_user_id, verdict, state, environment, kind, first_seen_ms, last_seen_ms, raw_store_response, expiry_ms, \
        store_checked_ms, last_purchase, history_count, ack_due_ms) \
        SELECT x.purchase_id, x.store, x.app_id, x.product_id, x.store_key, x.proof_hash, x.owner_user_id, x.verdict, \
        x.state, x.environment, x.kind, $2, $2, x.raw_store_response, x.expiry_ms, x.store_checked_ms, \
        x.last_purchase, x.history_count, x.ack_due_ms FROM json_to_recordset($1::json) AS x(purchase_id text, \
        store text, app_id text, product_id text, store_key text, proof_hash text, owner_user_id text, verdict text, \
        state text, environment text, kind text, raw_store_response text, expiry_ms bigint, store_checked_ms bigint, \
        last_purchase text, history_count bigint, ack_due_ms bigint) ORDER BY x.purchase_id \
        ON CONFLICT (purchase_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, expiry_ms = excluded.expiry_ms, \
        owner_user_id = excluded.owner_user_id, verdict = excluded.verdict, state = excluded.state, \
        history_count = excluded.history_count, \
        store_checked_ms = COALESCE(excluded.store_checked_ms, p.store_checked_ms), \
        last_purchase = CASE WHEN excluded.store_checked_ms IS NULL THEN p.last_purchase ELSE excluded.last_purchase END, \
        raw_store_response = CASE WHEN excluded.store_checked_ms IS NULL THEN p.raw_store_response \
        ELSE excluded.raw_store_response END, \
        ack_due_ms = CASE WHEN excluded.store_checked_ms IS NULL THEN p.ack_due_ms ELSE excluded.ack_due_ms END",
    insert_history: "INSERT INTO purchase_history (purchase_id, seq, at_ms, change, detail) \
        SELECT x.purchase_id, x.seq, $2, x.change, x.detail \
        FROM json_to_recordset($1::json) AS x(purchase_id text, seq bigint, change text, detail text)",
    insert_shares: "INSERT INTO purchase_shares (purchase_id, user_id, since_ms) \
        SELECT value->>0, value->>1, $2 FROM json_array_elements($1::json) ON CONFLICT DO NOTHING",
    revoke_grants: "UPDATE grants SET revoked_ms = $2 WHERE revoked_ms IS NULL \
        AND purchase_id IN (SELECT json_array_elements_text($1::json)) RETURNING grant_id, purchase_id, user_id",
    track_acknowledgements: "INSERT INTO pending_acknowledgements (purchase_id, store, app_id, product_id, proof, \
        deadline_ms, next_attempt_ms, attempts, lease_until_ms, last_error) \
        SELECT x.purchase_id, x.store, x.app_id, x.product_id, x.proof, x.deadline_ms, x.next_attempt_ms, 0, 0, '' \
        FROM json_to_recordset($1::json) AS x(purchase_id text, store text, app_id text, product_id text, \
        proof text, deadline_ms bigint, next_attempt_ms bigint) ON CONFLICT DO NOTHING",
    insert_events: "INSERT INTO ledger_events (seq, at_ms, app_id, user_id, kind, purchase_id, detail) \
        SELECT x.seq, $2, x.app_id, x.user_id, x.kind, x.purchase_id, x.detail \
        FROM json_to_recordset($1::json) AS x(seq bigint, app_id text, user_id text, kind text, \
        purchase_id text, detail text)",
};

/// PostgreSQL: everything a batch writes after its decisions, in one
/// statement (one round trip instead of six: under load each round trip
/// also waits for the runtime to poll the writer). Its parameters: the
/// purchases ($1), now ($2), history ($3), new shares ($4), acknowledgements
/// to track ($5), events numbered from 1 ($6) and their count ($7); the
/// sequence row is only taken when there are events.
static POSTGRES_WRITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let events = POSTGRES
        .insert_events
        .replace("SELECT x.seq,", "SELECT q.value - $7 + x.seq,")
        .replace("$1", "$6")
        .replace("detail text)", "detail text) CROSS JOIN q");
    format!(
        "WITH w AS ({}), h AS ({}), s AS ({}), a AS ({}), \
         q AS (UPDATE ledger_sequence SET value = value + $7 WHERE name = 'events' AND $7 > 0 RETURNING value), \
         e AS ({events}) \
         SELECT pg_notify('{}', '') FROM q",
        POSTGRES.write_purchases,
        POSTGRES.insert_history.replace("$1", "$3"),
        POSTGRES.insert_shares.replace("$1", "$4"),
        POSTGRES.track_acknowledgements.replace("$1", "$5"),
        super::feed::CHANNEL,
    )
});

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
}

impl<'a> NewPurchase<'a> {
    /// The purchase as `pending` describes it.
    fn of(pending: &'a Pending) -> NewPurchase<'a> {
        NewPurchase {
            purchase_id: &pending.purchase_id,
            store: &pending.store,
            app_id: &pending.app_id,
            product_id: &pending.product_id,
            store_key: &pending.store_key,
            proof_hash: &pending.proof_hash,
            verdict: pending.verdict,
            state: pending.state,
            environment: pending.environment,
            kind: pending.kind,
        }
    }
}

/// A purchase's row as the batch leaves it.
#[derive(Serialize)]
struct PurchaseRow<'a> {
    #[serde(flatten)]
    purchase: NewPurchase<'a>,
    owner_user_id: Option<String>,
    expiry_ms: Option<i64>,
    /// `None` keeps what the store said before (this batch's Verifies of it
    /// were all answered from the ledger); the columns below go with it.
    store_checked_ms: Option<i64>,
    last_purchase: Option<&'a str>,
    raw_store_response: &'a str,
    ack_due_ms: Option<i64>,
    history_count: i64,
}

#[derive(Serialize)]
struct HistoryEntry<'a> {
    purchase_id: &'a str,
    seq: i64,
    change: &'static str,
    detail: String,
}

#[derive(Serialize)]
struct NewEvent<'a> {
    /// Its number, once the batch has taken its numbers.
    seq: i64,
    app_id: &'a str,
    user_id: String,
    kind: &'static str,
    purchase_id: &'a str,
    detail: String,
}

#[derive(Serialize)]
struct TrackedAcknowledgement<'a> {
    purchase_id: &'a str,
    store: &'a str,
    app_id: &'a str,
    product_id: &'a str,
    proof: &'a str,
    deadline_ms: i64,
    next_attempt_ms: i64,
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
    /// Whether iapd recorded an Acknowledge or Consume of it, after which no
    /// acknowledgement is due whatever a store's stale answer says.
    settled: bool,
    history_count: i64,
    /// The last Verify of it in this batch, and the last whose store answered.
    last: Option<&'a Pending>,
    last_checked: Option<&'a Pending>,
}

impl<'a> Current<'a> {
    fn note(&mut self, history: &mut Vec<HistoryEntry<'a>>, id: &'a str, change: &'static str, detail: String) {
        self.history_count += 1;
        history.push(HistoryEntry { purchase_id: id, seq: self.history_count, change, detail });
    }
}

fn json<T: Serialize>(value: &T) -> Result<String, Failed> {
    serde_json::to_string(value)
        .map_err(|err| Failed::Other(sqlx::Error::Protocol(format!("cannot encode a ledger batch: {err}"))))
}

const VALID: &str = "VERDICT_VALID";
const REFUNDED: &str = "VERDICT_REFUNDED";
const CANCELED: &str = "VERDICT_CANCELED";

/// Records `batch` in one transaction: the Verifies' answers, in order, and
/// whether it wrote events.
async fn write(pool: &AnyPool, backend: Backend, batch: &[Pending]) -> Result<Written, Failed> {
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
    let taken = match backend {
        Backend::Sqlite => {
            let ids: Vec<&str> = first.keys().copied().collect();
            sqlx::query(sql.take_purchases).bind(json(&ids)?).fetch_all(&mut *tx).await?
        }
        Backend::Postgres => {
            let new: Vec<NewPurchase<'_>> = first.values().map(|pending| NewPurchase::of(pending)).collect();
            sqlx::query(sql.take_purchases).bind(json(&new)?).bind(now).fetch_all(&mut *tx).await?
        }
    };
    let mut current: HashMap<&str, Current<'_>> = HashMap::with_capacity(first.len());
    for row in taken {
        let purchase_id: String = row.try_get("purchase_id")?;
        let Some((&id, &pending)) = first.get_key_value(purchase_id.as_str()) else { continue };
        let inserted: bool = match backend {
            Backend::Sqlite => false,
            Backend::Postgres => row.try_get("inserted")?,
        };
        let (verdict, state): (String, String) = if inserted {
            (pending.verdict.to_owned(), pending.state.to_owned())
        } else {
            (row.try_get("verdict")?, row.try_get("state")?)
        };
        current.insert(
            id,
            Current {
                first_seen_ms: row.try_get("first_seen_ms")?,
                owner: row.try_get("owner_user_id")?,
                verdict,
                state,
                seen: !inserted,
                settled: row.try_get::<Option<i64>, _>("acknowledged_ms")?.is_some()
                    || row.try_get::<Option<i64>, _>("consumed_ms")?.is_some(),
                history_count: row.try_get("history_count")?,
                last: None,
                last_checked: None,
            },
        );
    }
    // On SQLite, the purchases not there yet.
    for (&id, pending) in &first {
        current.entry(id).or_insert_with(|| Current {
            first_seen_ms: now,
            owner: None,
            verdict: pending.verdict.to_owned(),
            state: pending.state.to_owned(),
            seen: false,
            settled: false,
            history_count: 0,
            last: None,
            last_checked: None,
        });
    }

    // Whom the purchases others own are already shared with, for the users
    // of this batch.
    let asked: Vec<(&str, &str)> = batch
        .iter()
        .filter(|p| p.claimable && !p.user_id.is_empty())
        .filter(|p| current.get(p.purchase_id.as_str()).is_some_and(|c| c.seen && c.owner.is_some()))
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
    let mut events: Vec<NewEvent<'_>> = Vec::new();
    let mut new_shares: Vec<(&str, &str)> = Vec::new();
    let mut refunded: Vec<&str> = Vec::new();
    for pending in batch {
        let id = pending.purchase_id.as_str();
        let Some(purchase) = current.get_mut(id) else {
            return Err(Failed::Other(sqlx::Error::RowNotFound));
        };
        let event = |kind: &'static str, detail: String| NewEvent {
            seq: 0,
            app_id: &pending.app_id,
            user_id: pending.user_id.clone(),
            kind,
            purchase_id: id,
            detail,
        };
        let seen_before = purchase.seen;
        if !seen_before {
            let detail = format!("verdict {}, state {}", pending.verdict, pending.state);
            purchase.note(&mut history, id, "recorded", detail);
        } else if purchase.verdict != pending.verdict || purchase.state != pending.state {
            let change = format!(
                "verdict {} -> {}, state {} -> {}",
                purchase.verdict, pending.verdict, purchase.state, pending.state
            );
            // A purchase that was valid and is refunded or canceled now loses
            // what it granted.
            let taken_back = purchase.verdict == VALID && matches!(pending.verdict, REFUNDED | CANCELED);
            if taken_back && !refunded.contains(&id) {
                refunded.push(id);
            }
            let kind =
                if pending.verdict == REFUNDED && purchase.verdict != REFUNDED { "refunded" } else { "state_changed" };
            purchase.note(&mut history, id, kind, change.clone());
            events.push(event(kind, change));
        }
        purchase.seen = true;
        purchase.verdict = pending.verdict.to_owned();
        purchase.state = pending.state.to_owned();
        purchase.last = Some(pending);
        if pending.checked.is_some() {
            purchase.last_checked = Some(pending);
        }

        let user = pending.user_id.as_str();
        let claim = if !pending.claimable {
            Claim::NotClaimable
        } else if user.is_empty() {
            Claim::NoUser
        } else {
            match purchase.owner.clone() {
                None => {
                    purchase.owner = Some(user.to_owned());
                    purchase.note(&mut history, id, "claimed", format!("by {user}"));
                    events.push(event("claimed", String::new()));
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
                            purchase.note(&mut history, id, "transferred", format!("from {owner} to {user}"));
                            events.push(event("transferred", String::new()));
                            Claim::Transferred
                        }
                        (false, ClaimPolicy::Share) => {
                            shares.insert((id.to_owned(), user.to_owned()));
                            new_shares.push((id, user));
                            purchase.note(&mut history, id, "shared", format!("with {user}"));
                            events.push(event("shared", String::new()));
                            Claim::Shared
                        }
                    }
                }
            }
        };
        recorded.push(Recorded {
            purchase_id: pending.purchase_id.clone(),
            first_seen_ms: purchase.first_seen_ms,
            seen_before,
            claim,
        });
    }

    if !refunded.is_empty() {
        for row in sqlx::query(sql.revoke_grants).bind(json(&refunded)?).bind(now).fetch_all(&mut *tx).await? {
            let grant_id: String = row.try_get("grant_id")?;
            let purchase_id: String = row.try_get("purchase_id")?;
            let user_id: String = row.try_get("user_id")?;
            let Some((&id, &pending)) = first.get_key_value(purchase_id.as_str()) else { continue };
            let Some(purchase) = current.get_mut(id) else { continue };
            purchase.note(&mut history, id, "grant_revoked", format!("{grant_id} of {user_id}"));
            // The grantee's event, so that a backend watching that user sees it.
            events.push(NewEvent {
                seq: 0,
                app_id: &pending.app_id,
                user_id,
                kind: "grant_revoked",
                purchase_id: id,
                detail: grant_id,
            });
        }
    }

    let mut rows = Vec::with_capacity(current.len());
    let mut acknowledgements = Vec::new();
    for (&id, purchase) in &current {
        let (Some(last), Some(&first)) = (purchase.last, first.get(id)) else { continue };
        let checked = purchase.last_checked;
        let ack_due_ms = checked.and_then(|pending| pending.ack_due_ms).filter(|_| !purchase.settled);
        if let (Some(deadline_ms), Some(auto)) = (ack_due_ms, checked.and_then(|pending| pending.acknowledge.as_ref()))
        {
            acknowledgements.push(TrackedAcknowledgement {
                purchase_id: id,
                store: &first.store,
                app_id: &first.app_id,
                product_id: &first.product_id,
                proof: &auto.proof,
                deadline_ms,
                next_attempt_ms: auto.next_attempt_ms.min(deadline_ms),
            });
        }
        rows.push(PurchaseRow {
            purchase: NewPurchase { verdict: last.verdict, state: last.state, ..NewPurchase::of(first) },
            owner_user_id: purchase.owner.clone(),
            expiry_ms: last.expiry_ms,
            store_checked_ms: checked.map(|_| now),
            last_purchase: checked.and_then(|pending| pending.checked.as_ref()).and_then(Option::as_deref),
            raw_store_response: checked.map_or("", |pending| &pending.raw_store_response),
            ack_due_ms,
            history_count: purchase.history_count,
        });
    }
    let acknowledgements_due = acknowledgements.iter().any(|tracked| tracked.next_attempt_ms <= now);
    let wrote_events = !events.is_empty();
    if backend == Backend::Postgres {
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        for (event, nth) in events.iter_mut().zip(1..) {
            event.seq = nth;
        }
        sqlx::query(&POSTGRES_WRITE)
            .bind(json(&rows)?)
            .bind(now)
            .bind(json(&history)?)
            .bind(json(&new_shares)?)
            .bind(json(&acknowledgements)?)
            .bind(json(&events)?)
            .bind(count)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(Written { recorded, wrote_events, acknowledgements_due });
    }
    sqlx::query(sql.write_purchases).bind(json(&rows)?).bind(now).execute(&mut *tx).await?;
    if !history.is_empty() {
        sqlx::query(sql.insert_history).bind(json(&history)?).bind(now).execute(&mut *tx).await?;
    }
    if !new_shares.is_empty() {
        sqlx::query(sql.insert_shares).bind(json(&new_shares)?).bind(now).execute(&mut *tx).await?;
    }
    if !acknowledgements.is_empty() {
        sqlx::query(sql.track_acknowledgements).bind(json(&acknowledgements)?).execute(&mut *tx).await?;
    }
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
        for (event, seq) in events.iter_mut().zip(last - count + 1..) {
            event.seq = seq;
        }
        sqlx::query(sql.insert_events).bind(json(&events)?).bind(now).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(Written { recorded, wrote_events, acknowledgements_due })
}
