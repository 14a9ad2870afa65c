//! The purchase ledger: what iapd has seen of every purchase, who owns it,
//! and what changed, in SQLite (embedded, the default) or PostgreSQL (shared
//! by several replicas). Every Verify that reaches a decision is recorded
//! here, in one transaction, before its answer is sent.
//!
//! The ledger knows purchases as the public API normalizes them (`pb`), never
//! a store's own formats, and nothing of gRPC: its errors become statuses in
//! `error.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};
use tokio::sync::Notify;

use crate::config::{AcknowledgeMode, AcknowledgePolicy, ClaimPolicy, LedgerConfig};
use crate::pb;

mod batch;
mod feed;
mod lookup;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("server/ledger/migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("server/ledger/migrations/postgres");

/// Why the ledger could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database could not be reached at start-up.
    #[error("cannot open the ledger at {url}: {reason}")]
    Open {
        /// The URL, its password removed.
        url: String,
        /// What the driver said.
        reason: String,
    },
    /// The schema could not be brought up to date.
    #[error("cannot migrate the ledger at {url}: {reason}")]
    Migrate {
        /// The URL, its password removed.
        url: String,
        /// What the migrator said.
        reason: String,
    },
    /// A read or write failed; nothing was recorded.
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
    /// A grant the ledger refuses; nothing was recorded.
    #[error(transparent)]
    Refused(#[from] GrantRefusal),
}

/// Why a grant is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantRefusal {
    /// No such purchase.
    #[error("no purchase `{0}` is in the ledger")]
    UnknownPurchase(String),
    /// The user neither owns the purchase nor shares it.
    #[error("the purchase is not this user's")]
    NotOwner,
    /// The purchase's last verdict is not VALID.
    #[error("the purchase's last verdict is {0}; only a VERDICT_VALID purchase is granted")]
    NotGrantable(String),
    /// It was consumed before any grant was started.
    #[error("the purchase was consumed without a grant, so it is never granted")]
    ConsumedWithoutGrant,
    /// No such grant.
    #[error("no grant `{0}` is in the ledger")]
    UnknownGrant(String),
    /// The grant was revoked (the purchase was refunded or canceled) before
    /// it was confirmed.
    #[error("grant `{0}` was revoked: its purchase was refunded or canceled, so it is not to be given")]
    RevokedGrant(String),
}

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    /// This call started it: the caller grants.
    Started,
    /// Started before and not confirmed: the caller checks its records.
    Pending,
    /// Confirmed: granted, never again.
    Confirmed,
    /// Taken back: the purchase was refunded or canceled after the grant
    /// started; the caller takes the content back (or never gives it).
    Revoked,
}

/// A grant as the ledger answers it.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Its id, which the caller stores with the content it grants.
    pub grant_id: String,
    /// Where it stands.
    pub state: GrantState,
    /// When it was started (unix millis).
    pub started_ms: i64,
}

/// What a store confirmed for a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreAction {
    /// Acknowledge succeeded.
    Acknowledged,
    /// Consume succeeded.
    Consumed,
}

impl From<sqlx::Error> for LedgerError {
    fn from(error: sqlx::Error) -> Self {
        LedgerError::Unavailable(error.to_string())
    }
}

/// How long start-up waits for the database.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The open ledger.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: AnyPool,
    backend: Backend,
    url: String,
    claims: BTreeMap<String, ClaimPolicy>,
    acknowledge: BTreeMap<String, AcknowledgePolicy>,
    acknowledgement_window: Duration,
    entitlements: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    final_state_freshness: Duration,
    /// Woken after every commit on this replica that wrote events, so that
    /// its event feed reads them at once.
    events_written: Arc<Notify>,
    /// Woken when a Verify made an acknowledgement due now.
    acknowledgements_due: Arc<Notify>,
    /// The writer that records Verifies in batches.
    recorder: tokio::sync::mpsc::Sender<batch::Pending>,
    /// Every event this replica reads, for its subscribers.
    feed: tokio::sync::broadcast::Sender<feed::Published>,
    /// The reader that asks for final purchases in batches.
    lookups: tokio::sync::mpsc::Sender<lookup::Lookup>,
}

/// The kinds of events the ledger writes.
pub const EVENT_KINDS: [&str; 10] = [
    "claimed",
    "transferred",
    "shared",
    "state_changed",
    "refunded",
    "grant_started",
    "granted",
    "grant_revoked",
    "acknowledged",
    "consumed",
];

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its number, in commit order.
    pub seq: i64,
    /// When (unix millis).
    pub at_ms: i64,
    /// The app.
    pub app_id: String,
    /// The user, or empty.
    pub user_id: String,
    /// One of [`EVENT_KINDS`].
    pub kind: String,
    /// The purchase.
    pub purchase_id: String,
    /// More, for people.
    pub detail: String,
}

/// Which events a subscriber wants.
#[derive(Debug, Clone)]
pub struct EventFilter {
    /// The app.
    pub app_id: String,
    /// One user's, or all when empty.
    pub user_id: String,
    /// These kinds, or all when empty.
    pub kinds: Vec<String>,
}

/// A purchase a user holds, as the ledger last saw it.
#[derive(Debug, Clone)]
pub struct HeldPurchase {
    /// The ledger's id.
    pub purchase_id: String,
    /// The store id.
    pub store: String,
    /// The product.
    pub product_id: String,
    /// The last verdict (`pb::Verdict` name).
    pub verdict: String,
    /// The last state (`pb::PurchaseState` name).
    pub state: String,
    /// The kind (`pb::ProductKind` name).
    pub kind: String,
    /// When iapd first saw it.
    pub first_seen_ms: i64,
    /// When it ends (subscriptions).
    pub expiry_ms: Option<i64>,
    /// When a Consume of it succeeded.
    pub consumed_ms: Option<i64>,
    /// When an Acknowledge of it succeeded.
    pub acknowledged_ms: Option<i64>,
    /// Whether the user holds it shared, not as its owner.
    pub shared: bool,
}

impl HeldPurchase {
    /// Whether it gives access now: valid, paid, not consumed, not expired.
    pub fn active(&self, now_ms: i64) -> bool {
        self.verdict == pb::Verdict::Valid.as_str_name()
            && self.state == pb::PurchaseState::Purchased.as_str_name()
            && self.consumed_ms.is_none()
            && self.expiry_ms.is_none_or(|expiry| expiry > now_ms)
    }
}

/// A user's entitlement, from the app's configured names.
#[derive(Debug, Clone)]
pub struct EntitlementState {
    /// Its name.
    pub name: String,
    /// Whether an active purchase grants it.
    pub active: bool,
    /// The products of the active purchases that grant it.
    pub product_ids: Vec<String>,
    /// The latest end among those purchases, if any ends.
    pub expiry_ms: Option<i64>,
}

/// What the caller asked about a user.
#[derive(Debug, Clone)]
pub struct Entitlements {
    /// Every entitlement the app configures.
    pub entitlements: Vec<EntitlementState>,
    /// The products the user has active purchases of.
    pub active_product_ids: Vec<String>,
}

/// The most purchases one user's entitlements are computed from.
const MAX_HELD: i64 = 10_000;

/// What a Verify decided, as the ledger records it.
#[derive(Debug)]
pub struct Observation<'a> {
    /// The store id.
    pub store: &'a str,
    /// The app.
    pub app_id: &'a str,
    /// The product asked about.
    pub product_id: &'a str,
    /// The hash of the proof the caller sent; the proof itself is never kept.
    pub proof_hash: &'a ProofHash,
    /// The caller's user id, empty if none.
    pub user_id: &'a str,
    /// The verdict.
    pub verdict: pb::Verdict,
    /// The purchase as the store described it, if it did.
    pub purchase: Option<&'a pb::Purchase>,
    /// Whether the store answered (not the ledger).
    pub from_store: bool,
    /// The proof, where the app has iapd acknowledge its purchases
    /// ([`Ledger::acknowledges`]): kept until the acknowledgement is made.
    pub proof: Option<&'a pb::PurchaseProof>,
}

/// A purchase in a final state, as the store last described it.
#[derive(Debug, Clone)]
pub struct FinalAnswer {
    /// The last verdict (`pb::Verdict` name).
    pub verdict: String,
    /// Whether a Consume of it succeeded.
    pub consumed: bool,
    /// The store's last description of it, its raw answer included, with
    /// what iapd saw happen since (a Consume) applied.
    pub purchase: Option<pb::Purchase>,
    /// When the store last answered for it.
    pub store_checked_ms: i64,
}

/// An acknowledgement iapd is to make, leased to this replica.
#[derive(Debug, Clone)]
pub struct DueAcknowledgement {
    /// The ledger's id of the purchase.
    pub purchase_id: String,
    /// The store id.
    pub store: String,
    /// The app.
    pub app_id: String,
    /// The product.
    pub product_id: String,
    /// The proof the Verify was given.
    pub proof: pb::PurchaseProof,
    /// When the store's deadline falls (unix millis).
    pub deadline_ms: i64,
    /// How many tries failed so far.
    pub attempts: i64,
}

/// Whose the purchase is, as far as this Verify is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No user id was given, so nothing was claimed.
    NoUser,
    /// This Verify made the caller's user the owner.
    New,
    /// The caller's user already owned it.
    Owner,
    /// It is shared with the caller's user (policy `share`).
    Shared,
    /// It moved to the caller's user (policy `transfer`).
    Transferred,
    /// Another user owns it (policy `reject`): the verdict becomes
    /// VERDICT_CLAIMED_BY_OTHER_USER.
    ClaimedByOther,
    /// Not a purchase anyone can own (not found, invalid, canceled...).
    NotClaimable,
}

/// What the ledger knows after recording a Verify.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The ledger's id of the purchase.
    pub purchase_id: String,
    /// When iapd first saw it (unix millis).
    pub first_seen_ms: i64,
    /// Whether it had been seen before this Verify.
    pub seen_before: bool,
    /// The claim.
    pub claim: Claim,
}

impl Ledger {
    /// Connects (creating an SQLite file and its folder if needed) and
    /// applies the migrations if `migrate` is set.
    pub async fn open(config: &LedgerConfig, migrate: bool) -> Result<Ledger, LedgerError> {
        sqlx::any::install_default_drivers();
        let (url, backend) = database_url(config)?;
        let shown = redact_url(&url);
        let open_error = |reason: String| LedgerError::Open { url: shown.clone(), reason };
        if backend == Backend::Sqlite
            && let Some(folder) = config.sqlite_path().parent()
        {
            std::fs::create_dir_all(folder)
                .map_err(|err| open_error(format!("cannot create folder `{}`: {err}", folder.display())))?;
        }
        let options = AnyConnectOptions::from_str(&url).map_err(|err| open_error(err.to_string()))?;
        // One connection first, on a short fuse, so that a database that is
        // not there stops start-up at once with its own error.
        let probe =
            tokio::time::timeout(OPEN_TIMEOUT, <sqlx::AnyConnection as sqlx::Connection>::connect_with(&options))
                .await
                .map_err(|_| open_error(format!("no connection within {} s", OPEN_TIMEOUT.as_secs())))?
                .map_err(|err| open_error(err.to_string()))?;
        sqlx::Connection::close(probe).await.map_err(|err| open_error(err.to_string()))?;
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { config.max_connections })
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    let settings: &[&str] = match backend {
                        // Statement journals (every multi-row statement in a
                        // transaction keeps one) in memory, not in temporary
                        // files; and a page cache that holds the hot indexes.
                        Backend::Sqlite => &["PRAGMA temp_store = MEMORY", "PRAGMA cache_size = -16384"],
                        // Plan each statement for the table as it is now. A
                        // connection's cached generic plan is chosen once and
                        // kept: made while the ledger is empty it scans the
                        // wrong index forever (18 ms a lookup at 50,000 rows
                        // instead of 0.07 ms).
                        Backend::Postgres => &["SET plan_cache_mode = force_custom_plan"],
                    };
                    for setting in settings {
                        sqlx::Executor::execute(&mut *connection, *setting).await?;
                    }
                    Ok(())
                })
            })
            // Waiting for a connection is bounded by each call's own deadline
            // (the service times every ledger operation out at it), not here:
            // a burst of calls that answer together queues for SQLite's one
            // writer longer than any fixed wait would guess.
            .acquire_timeout(Duration::from_secs(600))
            .connect_with(options)
            .await
            .map_err(|err| open_error(err.to_string()))?;
        if backend == Backend::Sqlite {
            // WAL lets readers run beside the one writer. It is a setting of
            // the file, so once is enough; each connection keeps SQLite's
            // defaults of synchronous = FULL (a commit is durable before the
            // answer) and sqlx's 5 s busy timeout (writers queue, not fail).
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await.map_err(|err| open_error(err.to_string()))?;
        }
        let events_written = Arc::new(Notify::new());
        let acknowledgements_due = Arc::new(Notify::new());
        let wake = batch::Wake { events: events_written.clone(), acknowledgements: acknowledgements_due.clone() };
        let ledger = Ledger {
            recorder: batch::spawn(pool.clone(), backend, wake),
            lookups: lookup::spawn(pool.clone(), backend),
            feed: feed::spawn(
                pool.clone(),
                events_written.clone(),
                (backend == Backend::Postgres).then(|| url.clone()),
            )
            .await,
            acknowledgements_due,
            pool,
            backend,
            url: shown,
            claims: config.claims.clone(),
            acknowledge: config.acknowledge.clone(),
            acknowledgement_window: config.acknowledgement_window,
            entitlements: config.entitlements.clone(),
            events_written,
            final_state_freshness: config.final_state_freshness,
        };
        if migrate {
            ledger.migrate().await?;
        }
        Ok(ledger)
    }

    /// Brings the schema up to date.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|err| LedgerError::Migrate { url: self.url.clone(), reason: err.to_string() })
    }

    /// The database's URL, its password removed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Records a Verify's decision and applies the app's claims policy. The
    /// ledger's one writer commits it with the Verifies that arrive beside it
    /// (`batch.rs`) and answers once it is durable: with two replicas racing
    /// to claim one purchase for two users, exactly one of them becomes its
    /// owner.
    pub async fn record(&self, observation: &Observation<'_>) -> Result<Recorded, LedgerError> {
        let proof_hash = &observation.proof_hash.0;
        let store_key = observation
            .purchase
            .and_then(|purchase| {
                [&purchase.transaction_id, &purchase.order_id].into_iter().find(|id| !id.is_empty()).cloned()
            })
            .unwrap_or_else(|| format!("proof:{proof_hash}"));
        let purchase = observation.purchase;
        let now = now_ms();
        // Due when the store says a valid, paid purchase awaits its
        // acknowledgement (consuming it acknowledges it too).
        let ack_due_ms = purchase
            .filter(|purchase| {
                observation.from_store
                    && observation.verdict == pb::Verdict::Valid
                    && purchase.state() == pb::PurchaseState::Purchased
                    && purchase.acknowledgement_state() == pb::AcknowledgementState::NotAcknowledged
                    && purchase.consumption_state() != pb::ConsumptionState::Consumed
            })
            .map(|purchase| {
                let bought = purchase.purchase_time.as_ref().map_or(now, timestamp_ms);
                bought.saturating_add(millis(self.acknowledgement_window))
            });
        let acknowledge = match (ack_due_ms, self.acknowledge.get(observation.app_id), observation.proof) {
            (Some(due), Some(policy), Some(proof)) => Some(batch::AutoAcknowledge {
                proof: hex(&prost::Message::encode_to_vec(proof)),
                next_attempt_ms: match policy.mode {
                    AcknowledgeMode::BeforeDeadline => due.saturating_sub(millis(policy.margin)),
                    AcknowledgeMode::AfterVerify | AcknowledgeMode::Manual => now,
                },
            }),
            _ => None,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = batch::Pending {
            purchase_id: purchase_id(observation.store, observation.app_id, &store_key),
            store: observation.store.to_owned(),
            app_id: observation.app_id.to_owned(),
            product_id: observation.product_id.to_owned(),
            store_key,
            proof_hash: proof_hash.clone(),
            user_id: observation.user_id.to_owned(),
            verdict: observation.verdict.as_str_name(),
            state: purchase.map_or(pb::PurchaseState::Unspecified, pb::Purchase::state).as_str_name(),
            environment: purchase.map_or(pb::Environment::Unspecified, pb::Purchase::environment).as_str_name(),
            kind: purchase.map_or(pb::ProductKind::Unspecified, pb::Purchase::kind).as_str_name(),
            claimable: matches!(observation.verdict, pb::Verdict::Valid | pb::Verdict::Pending),
            expiry_ms: purchase.and_then(|purchase| purchase.expiry_time.as_ref()).map(timestamp_ms),
            ack_due_ms,
            acknowledge,
            checked: observation.from_store.then(|| {
                observation.purchase.map(|purchase| {
                    let without_raw = pb::Purchase { raw_store_response: String::new(), ..purchase.clone() };
                    hex(&prost::Message::encode_to_vec(&without_raw))
                })
            }),
            raw_store_response: purchase.map(|purchase| purchase.raw_store_response.clone()).unwrap_or_default(),
            policy: self.policy(observation.app_id),
            reply,
        };
        let gone = || LedgerError::Unavailable("the ledger's writer has stopped".to_owned());
        self.recorder.send(pending).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Whether iapd acknowledges this app's purchases itself, so that a
    /// Verify must hand the ledger its proof.
    pub fn acknowledges(&self, app_id: &str) -> bool {
        self.acknowledge.contains_key(app_id)
    }

    /// Starts the grant of a purchase to a user, or finds the one started
    /// before. The purchase row is locked first, so two callers racing get
    /// one grant between them: one `Started`, the other `Pending`.
    /// A purchase of an app outside `apps` is unknown to this caller.
    pub async fn grant(&self, purchase_id: &str, user_id: &str, apps: &AppScope) -> Result<Grant, LedgerError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let Some(row) = sqlx::query(
            "UPDATE purchases SET last_seen_ms = last_seen_ms WHERE purchase_id = $1 \
             RETURNING owner_user_id, verdict, consumed_ms, app_id",
        )
        .bind(purchase_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(GrantRefusal::UnknownPurchase(purchase_id.to_owned()).into());
        };
        let owner: Option<String> = row.try_get("owner_user_id")?;
        let verdict: String = row.try_get("verdict")?;
        let consumed_ms: Option<i64> = row.try_get("consumed_ms")?;
        let app_id: String = row.try_get("app_id")?;
        if !apps.allows(&app_id) {
            return Err(GrantRefusal::UnknownPurchase(purchase_id.to_owned()).into());
        }
        let shared = sqlx::query("SELECT 1 FROM purchase_shares WHERE purchase_id = $1 AND user_id = $2")
            .bind(purchase_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if owner.as_deref() != Some(user_id) && !shared {
            return Err(GrantRefusal::NotOwner.into());
        }
        let existing = sqlx::query(
            "SELECT grant_id, state, started_ms, revoked_ms FROM grants WHERE purchase_id = $1 AND user_id = $2",
        )
        .bind(purchase_id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            let state: String = row.try_get("state")?;
            let grant = Grant {
                grant_id: row.try_get("grant_id")?,
                state: match (state.as_str(), row.try_get::<Option<i64>, _>("revoked_ms")?) {
                    (_, Some(_)) => GrantState::Revoked,
                    ("confirmed", None) => GrantState::Confirmed,
                    _ => GrantState::Pending,
                },
                started_ms: row.try_get("started_ms")?,
            };
            tx.commit().await?;
            return Ok(grant);
        }
        if verdict != pb::Verdict::Valid.as_str_name() {
            return Err(GrantRefusal::NotGrantable(verdict).into());
        }
        if consumed_ms.is_some() {
            return Err(GrantRefusal::ConsumedWithoutGrant.into());
        }
        let grant_id = new_grant_id()?;
        sqlx::query(
            "INSERT INTO grants (grant_id, purchase_id, user_id, state, started_ms, confirmed_ms) \
             VALUES ($1, $2, $3, 'started', $4, NULL)",
        )
        .bind(&grant_id)
        .bind(purchase_id)
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.history(&mut tx, purchase_id, now, "grant_started", format!("{grant_id} to {user_id}")).await?;
        self.event(&mut tx, now, &app_id, user_id, "grant_started", purchase_id, grant_id.clone()).await?;
        announce(&mut tx, self.backend).await?;
        tx.commit().await?;
        self.events_written.notify_waiters();
        Ok(Grant { grant_id, state: GrantState::Started, started_ms: now })
    }

    /// Confirms a started grant; whether it had been confirmed before. A
    /// grant of an app outside `apps` is unknown to this caller.
    pub async fn confirm_grant(&self, grant_id: &str, apps: &AppScope) -> Result<bool, LedgerError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let unknown = || LedgerError::from(GrantRefusal::UnknownGrant(grant_id.to_owned()));
        let purchase_id: String = sqlx::query("SELECT purchase_id FROM grants WHERE grant_id = $1")
            .bind(grant_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(unknown)?
            .try_get("purchase_id")?;
        // The purchase first, as every writer takes it before its grants, so
        // that a refund recorded at the same time cannot deadlock with this.
        let app_id: String =
            sqlx::query("UPDATE purchases SET last_seen_ms = last_seen_ms WHERE purchase_id = $1 RETURNING app_id")
                .bind(&purchase_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("app_id")?;
        if !apps.allows(&app_id) {
            return Err(unknown());
        }
        let confirmed = sqlx::query(
            "UPDATE grants SET state = 'confirmed', confirmed_ms = $2 \
             WHERE grant_id = $1 AND state = 'started' AND revoked_ms IS NULL RETURNING user_id",
        )
        .bind(grant_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = confirmed else {
            let row = sqlx::query("SELECT state, revoked_ms FROM grants WHERE grant_id = $1")
                .bind(grant_id)
                .fetch_one(&mut *tx)
                .await?;
            let state: String = row.try_get("state")?;
            let revoked = row.try_get::<Option<i64>, _>("revoked_ms")?.is_some();
            tx.commit().await?;
            return if revoked && state != "confirmed" {
                Err(GrantRefusal::RevokedGrant(grant_id.to_owned()).into())
            } else {
                Ok(true)
            };
        };
        let user_id: String = row.try_get("user_id")?;
        self.history(&mut tx, &purchase_id, now, "granted", format!("{grant_id} to {user_id}")).await?;
        self.event(&mut tx, now, &app_id, &user_id, "granted", &purchase_id, grant_id.to_owned()).await?;
        announce(&mut tx, self.backend).await?;
        tx.commit().await?;
        self.events_written.notify_waiters();
        Ok(false)
    }

    /// Records an Acknowledge or Consume the store confirmed, for the
    /// purchase this proof was verified as; `None` if it never was.
    pub async fn record_store_action(
        &self,
        store: &str,
        app_id: &str,
        proof_hash: &ProofHash,
        action: StoreAction,
    ) -> Result<Option<String>, LedgerError> {
        let now = now_ms();
        let (column, kind) = match action {
            StoreAction::Acknowledged => ("acknowledged_ms", "acknowledged"),
            StoreAction::Consumed => ("consumed_ms", "consumed"),
        };
        let mut tx = self.begin().await?;
        // The column name is one of two constants, never input.
        // Either settles what Google's acknowledgement deadline asks.
        let updated = sqlx::query(&format!(
            "UPDATE purchases SET {column} = $4, ack_due_ms = NULL \
             WHERE store = $1 AND app_id = $2 AND proof_hash = $3 AND {column} IS NULL \
             RETURNING purchase_id, owner_user_id"
        ))
        .bind(store)
        .bind(app_id)
        .bind(&proof_hash.0)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut recorded = None;
        for row in updated {
            let purchase_id: String = row.try_get("purchase_id")?;
            let owner: Option<String> = row.try_get("owner_user_id")?;
            sqlx::query("DELETE FROM pending_acknowledgements WHERE purchase_id = $1")
                .bind(&purchase_id)
                .execute(&mut *tx)
                .await?;
            self.history(&mut tx, &purchase_id, now, kind, String::new()).await?;
            self.event(&mut tx, now, app_id, owner.as_deref().unwrap_or(""), kind, &purchase_id, String::new()).await?;
            recorded = Some(purchase_id);
        }
        if recorded.is_some() {
            announce(&mut tx, self.backend).await?;
        }
        tx.commit().await?;
        if recorded.is_some() {
            self.events_written.notify_waiters();
        }
        Ok(recorded)
    }

    /// One page of the purchases a user holds in an app (owned or shared), in
    /// the order of their ids, after `after` (exclusive; "" for the start).
    pub async fn purchases_of(
        &self,
        app_id: &str,
        user_id: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<HeldPurchase>, LedgerError> {
        let rows = sqlx::query(
            "SELECT purchase_id, store, product_id, verdict, state, kind, first_seen_ms, expiry_ms, consumed_ms, \
             acknowledged_ms, owner_user_id FROM purchases WHERE app_id = $1 AND purchase_id > $3 AND \
             (owner_user_id = $2 OR purchase_id IN (SELECT purchase_id FROM purchase_shares WHERE user_id = $2)) \
             ORDER BY purchase_id LIMIT $4",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let owner: Option<String> = row.try_get("owner_user_id")?;
                Ok(HeldPurchase {
                    purchase_id: row.try_get("purchase_id")?,
                    store: row.try_get("store")?,
                    product_id: row.try_get("product_id")?,
                    verdict: row.try_get("verdict")?,
                    state: row.try_get("state")?,
                    kind: row.try_get("kind")?,
                    first_seen_ms: row.try_get("first_seen_ms")?,
                    expiry_ms: row.try_get("expiry_ms")?,
                    consumed_ms: row.try_get("consumed_ms")?,
                    acknowledged_ms: row.try_get("acknowledged_ms")?,
                    shared: owner.as_deref() != Some(user_id),
                })
            })
            .collect()
    }

    /// A user's entitlements in an app (every one the app configures, active
    /// or not) and the products the user holds active purchases of.
    pub async fn entitlements_of(&self, app_id: &str, user_id: &str) -> Result<Entitlements, LedgerError> {
        let now = now_ms();
        let held = self.purchases_of(app_id, user_id, "", MAX_HELD).await?;
        let active: Vec<&HeldPurchase> = held.iter().filter(|purchase| purchase.active(now)).collect();
        let mut active_product_ids: Vec<String> = active.iter().map(|purchase| purchase.product_id.clone()).collect();
        active_product_ids.sort();
        active_product_ids.dedup();
        let configured = self.entitlements.get(app_id).into_iter().flatten();
        let entitlements = configured
            .map(|(name, patterns)| {
                let granting: Vec<&&HeldPurchase> = active
                    .iter()
                    .filter(|purchase| patterns.iter().any(|pattern| grants(pattern, &purchase.product_id)))
                    .collect();
                let mut product_ids: Vec<String> =
                    granting.iter().map(|purchase| purchase.product_id.clone()).collect();
                product_ids.sort();
                product_ids.dedup();
                EntitlementState {
                    name: name.clone(),
                    active: !granting.is_empty(),
                    expiry_ms: if granting.iter().any(|purchase| purchase.expiry_ms.is_none()) {
                        None
                    } else {
                        granting.iter().filter_map(|purchase| purchase.expiry_ms).max()
                    },
                    product_ids,
                }
            })
            .collect();
        Ok(Entitlements { entitlements, active_product_ids })
    }

    /// Up to `limit` events after `after` that pass `filter`, in order.
    pub async fn events_after(&self, after: i64, filter: &EventFilter, limit: i64) -> Result<Vec<Event>, LedgerError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, app_id, user_id, kind, purchase_id, detail FROM ledger_events \
             WHERE seq > $1 AND app_id = $2 AND ($3 = '' OR user_id = $3) ORDER BY seq LIMIT $4",
        )
        .bind(after)
        .bind(&filter.app_id)
        .bind(&filter.user_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let events = rows.iter().map(event_of).collect::<Result<Vec<_>, LedgerError>>()?;
        Ok(events)
    }

    /// The purchase this proof was verified as, if it is in a final state
    /// (refunded, canceled, consumed) and the store answered for it since
    /// `checked_since` (unix millis).
    pub async fn final_answer(
        &self,
        store: &str,
        app_id: &str,
        product_id: &str,
        proof_hash: &ProofHash,
        checked_since: i64,
    ) -> Result<Option<FinalAnswer>, LedgerError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let lookup = lookup::Lookup {
            store: store.to_owned(),
            app_id: app_id.to_owned(),
            product_id: product_id.to_owned(),
            proof_hash: proof_hash.0.clone(),
            checked_since,
            reply,
        };
        let gone = || LedgerError::Unavailable("the ledger's reader has stopped".to_owned());
        self.lookups.send(lookup).await.map_err(|_| gone())?;
        let Some(row) = answer.await.map_err(|_| gone())?? else { return Ok(None) };
        let consumed = row.consumed_ms.is_some();
        let acknowledged = row.acknowledged_ms.is_some();
        let purchase = row.last_purchase.and_then(|text| unhex(&text)).and_then(|bytes| {
            let mut purchase = <pb::Purchase as prost::Message>::decode(bytes.as_slice()).ok()?;
            if consumed {
                purchase.set_consumption_state(pb::ConsumptionState::Consumed);
            }
            // A consumed purchase is acknowledged too, where the store has the notion.
            if (consumed || acknowledged) && purchase.acknowledgement_state() != pb::AcknowledgementState::NotApplicable
            {
                purchase.set_acknowledgement_state(pb::AcknowledgementState::Acknowledged);
            }
            Some(purchase)
        });
        let raw_store_response = row.raw_store_response;
        Ok(Some(FinalAnswer {
            verdict: row.verdict,
            consumed,
            purchase: purchase.map(|purchase| pb::Purchase { raw_store_response, ..purchase }),
            store_checked_ms: row.store_checked_ms,
        }))
    }

    /// How long final purchases are answered from the ledger.
    pub fn final_state_freshness(&self) -> Duration {
        self.final_state_freshness
    }

    /// One round trip to the database.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Woken when a Verify on this replica made an acknowledgement due now.
    pub fn acknowledgements_due(&self) -> Arc<Notify> {
        self.acknowledgements_due.clone()
    }

    /// Leases up to `limit` acknowledgements that are due to this replica for
    /// `lease`: no other replica takes them meanwhile.
    pub async fn take_due_acknowledgements(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<DueAcknowledgement>, LedgerError> {
        let now = now_ms();
        // PostgreSQL: rows another replica is leasing at this moment are
        // skipped, not waited for. SQLite's one writer makes the statement
        // atomic by itself.
        let skip_locked = if self.backend == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let rows = sqlx::query(&format!(
            "UPDATE pending_acknowledgements SET lease_until_ms = $2 WHERE purchase_id IN \
             (SELECT purchase_id FROM pending_acknowledgements WHERE next_attempt_ms <= $1 AND lease_until_ms <= $1 \
             ORDER BY next_attempt_ms LIMIT $3{skip_locked}) \
             RETURNING purchase_id, store, app_id, product_id, proof, deadline_ms, attempts"
        ))
        .bind(now)
        .bind(now.saturating_add(millis(lease)))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let proof: String = row.try_get("proof")?;
                let proof = unhex(&proof)
                    .and_then(|bytes| <pb::PurchaseProof as prost::Message>::decode(bytes.as_slice()).ok())
                    .ok_or_else(|| LedgerError::Unavailable("a kept proof does not decode".to_owned()))?;
                Ok(DueAcknowledgement {
                    purchase_id: row.try_get("purchase_id")?,
                    store: row.try_get("store")?,
                    app_id: row.try_get("app_id")?,
                    product_id: row.try_get("product_id")?,
                    proof,
                    deadline_ms: row.try_get("deadline_ms")?,
                    attempts: row.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// Gives a leased acknowledgement back, to be tried again after `wait`.
    pub async fn acknowledgement_failed(
        &self,
        purchase_id: &str,
        error: &str,
        wait: Duration,
    ) -> Result<(), LedgerError> {
        let next = now_ms().saturating_add(millis(wait));
        sqlx::query(
            "UPDATE pending_acknowledgements SET attempts = attempts + 1, next_attempt_ms = $2, lease_until_ms = 0, \
             last_error = $3 WHERE purchase_id = $1",
        )
        .bind(purchase_id)
        .bind(next)
        .bind(error.chars().take(500).collect::<String>())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stops trying to acknowledge a purchase, saying why in its history.
    pub async fn abandon_acknowledgement(&self, purchase_id: &str, why: &str) -> Result<(), LedgerError> {
        let mut tx = self.begin().await?;
        let deleted = sqlx::query("DELETE FROM pending_acknowledgements WHERE purchase_id = $1")
            .bind(purchase_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted > 0 {
            let why = why.chars().take(500).collect();
            self.history(&mut tx, purchase_id, now_ms(), "acknowledgement_abandoned", why).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Per store, the valid purchases of `apps` awaiting an acknowledgement,
    /// and those of them whose deadline is less than `within` away (or past).
    pub async fn acknowledgements_pending(
        &self,
        within: Duration,
        apps: &AppScope,
    ) -> Result<BTreeMap<String, (u64, u64)>, LedgerError> {
        let soon = now_ms().saturating_add(millis(within));
        let rows = sqlx::query(
            "SELECT store, app_id, COUNT(*) AS due, SUM(CASE WHEN ack_due_ms < $1 THEN 1 ELSE 0 END) AS at_risk \
             FROM purchases WHERE ack_due_ms IS NOT NULL AND verdict = 'VERDICT_VALID' GROUP BY store, app_id",
        )
        .bind(soon)
        .fetch_all(&self.pool)
        .await?;
        let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for row in rows {
            if !apps.allows(row.try_get("app_id")?) {
                continue;
            }
            let due: i64 = row.try_get("due")?;
            let at_risk: i64 = row.try_get("at_risk")?;
            let count = counts.entry(row.try_get("store")?).or_default();
            count.0 += u64::try_from(due).unwrap_or(0);
            count.1 += u64::try_from(at_risk).unwrap_or(0);
        }
        Ok(counts)
    }

    /// The events this replica reads from now on, every app's, in order;
    /// `Err` when the ledger could not be read. A receiver that falls too far
    /// behind gets `Lagged` and reads from the database instead.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<Result<Arc<[Event]>, String>> {
        self.feed.subscribe()
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, LedgerError> {
        Ok(begin(&self.pool, self.backend).await?)
    }

    fn policy(&self, app_id: &str) -> ClaimPolicy {
        self.claims.get(app_id).copied().unwrap_or_default()
    }

    async fn history(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        purchase_id: &str,
        now: i64,
        change: &str,
        detail: String,
    ) -> Result<(), LedgerError> {
        // The count is on the purchase's row, which this also locks.
        let seq: i64 = sqlx::query(
            "UPDATE purchases SET history_count = history_count + 1 WHERE purchase_id = $1 RETURNING history_count",
        )
        .bind(purchase_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("history_count")?;
        sqlx::query(
            "INSERT INTO purchase_history (purchase_id, seq, at_ms, change, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(purchase_id)
        .bind(seq)
        .bind(now)
        .bind(change)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Appends an event. Its number comes from the sequence row, locked until
    /// the transaction commits, so numbers commit in order on every replica.
    #[allow(clippy::too_many_arguments)]
    async fn event(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        now: i64,
        app_id: &str,
        user_id: &str,
        kind: &str,
        purchase_id: &str,
        detail: String,
    ) -> Result<(), LedgerError> {
        let seq: i64 =
            sqlx::query("UPDATE ledger_sequence SET value = value + 1 WHERE name = 'events' RETURNING value")
                .fetch_one(&mut **tx)
                .await?
                .try_get("value")?;
        sqlx::query(
            "INSERT INTO ledger_events (seq, at_ms, app_id, user_id, kind, purchase_id, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(seq)
        .bind(now)
        .bind(app_id)
        .bind(user_id)
        .bind(kind)
        .bind(purchase_id)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

fn event_of(row: &sqlx::any::AnyRow) -> Result<Event, LedgerError> {
    Ok(Event {
        seq: row.try_get("seq")?,
        at_ms: row.try_get("at_ms")?,
        app_id: row.try_get("app_id")?,
        user_id: row.try_get("user_id")?,
        kind: row.try_get("kind")?,
        purchase_id: row.try_get("purchase_id")?,
        detail: row.try_get("detail")?,
    })
}

/// Tells the other replicas (PostgreSQL) that this transaction wrote events:
/// the notification is delivered when it commits.
async fn announce(tx: &mut sqlx::Transaction<'_, sqlx::Any>, backend: Backend) -> Result<(), sqlx::Error> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, '')").bind(feed::CHANNEL).execute(&mut **tx).await?;
    }
    Ok(())
}

/// A write transaction. SQLite takes its write lock at the start, so that
/// two writers queue on the busy timeout instead of one failing at its
/// upgrade.
async fn begin(pool: &AnyPool, backend: Backend) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    pool.begin_with(if backend == Backend::Sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" }).await
}

/// The URL to connect to, and which database it is.
fn database_url(config: &LedgerConfig) -> Result<(String, Backend), LedgerError> {
    let url = match &config.url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}?mode=rwc", config.sqlite_path().display()),
    };
    let backend = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Backend::Postgres
    } else {
        return Err(LedgerError::Open {
            url: redact_url(&url),
            reason: "a ledger url is sqlite:… or postgres://…".to_owned(),
        });
    };
    Ok((url, backend))
}

/// The apps a ledger query may see.
#[derive(Debug, Clone)]
pub enum AppScope {
    /// Every app.
    All,
    /// Only these.
    Only(Arc<std::collections::BTreeSet<String>>),
}

impl AppScope {
    /// Whether the scope includes `app_id`.
    pub fn allows(&self, app_id: &str) -> bool {
        match self {
            AppScope::All => true,
            AppScope::Only(apps) => apps.contains(app_id),
        }
    }
}

/// The URL with its password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "(a url that does not parse)".to_owned(),
    }
}

/// The ledger's id of a purchase: a hash of where it lives, so that every
/// replica computes the same id without asking the database.
fn purchase_id(store: &str, app_id: &str, store_key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{store}\n{app_id}\n{store_key}").as_bytes());
    format!("pur_{}", hex(&digest.as_ref()[..16]))
}

/// Whether a configured product pattern (an id, or a prefix ending in `*`)
/// covers a product.
fn grants(pattern: &str, product_id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => product_id.starts_with(prefix),
        None => pattern == product_id,
    }
}

/// A new grant id: random, so that no caller can confirm a grant it was not
/// given.
fn new_grant_id() -> Result<String, LedgerError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| LedgerError::Unavailable("the system's random source failed".to_owned()))?;
    Ok(format!("grt_{}", hex(&bytes)))
}

/// A hash of a proof: enough to recognize it again, useless to replay.
/// Computed once per call, before the proof moves on to the plugin.
#[derive(Debug, Clone)]
pub struct ProofHash(String);

impl ProofHash {
    /// The hash of `proof` (its kind, value and store parameters).
    pub fn of(proof: &pb::PurchaseProof) -> ProofHash {
        ProofHash(proof_hash(proof))
    }
}

fn proof_hash(proof: &pb::PurchaseProof) -> String {
    use pb::purchase_proof::Proof;
    let (kind, value) = match &proof.proof {
        Some(Proof::PurchaseToken(value)) => ("purchase_token", value),
        Some(Proof::TransactionId(value)) => ("transaction_id", value),
        Some(Proof::SignedTransaction(value)) => ("signed_transaction", value),
        Some(Proof::Receipt(value)) => ("receipt", value),
        Some(Proof::PurchaseId(value)) => ("purchase_id", value),
        None => ("none", &String::new()),
    };
    let mut text = format!("{kind}\n{value}");
    let parameters: BTreeMap<_, _> = proof.store_parameters.iter().collect();
    for (key, value) in parameters {
        text.push_str(&format!("\n{key}={value}"));
    }
    hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    text.len()
        .is_multiple_of(2)
        .then(|| (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect())
        .flatten()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn timestamp_ms(time: &prost_types::Timestamp) -> i64 {
    time.seconds.saturating_mul(1000).saturating_add(i64::from(time.nanos) / 1_000_000)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Now, in unix millis.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

impl LedgerConfig {
    /// Where the embedded SQLite ledger lives.
    pub fn sqlite_path(&self) -> std::path::PathBuf {
        Path::new(&self.data_dir).join("ledger.sqlite3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_leave_the_url() {
        let cases = [
            ("postgres://iapd:s3cret@db.internal:5432/ledger", "postgres://iapd:REDACTED@db.internal:5432/ledger"),
            ("postgres://iapd@127.0.0.1/ledger", "postgres://iapd@127.0.0.1/ledger"),
            ("sqlite:///var/lib/iapd/ledger.sqlite3?mode=rwc", "sqlite:///var/lib/iapd/ledger.sqlite3?mode=rwc"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn a_purchase_has_one_id_wherever_it_is_computed() {
        assert_eq!(
            purchase_id("sandbox", "com.example", "SANDBOX.1"),
            purchase_id("sandbox", "com.example", "SANDBOX.1")
        );
        assert_ne!(
            purchase_id("sandbox", "com.example", "SANDBOX.1"),
            purchase_id("sandbox", "com.other", "SANDBOX.1")
        );
        assert!(purchase_id("a", "b", "c").starts_with("pur_"));
    }
}
