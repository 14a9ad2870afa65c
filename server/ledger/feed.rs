//! This replica's feed of ledger events: one task reads each commit's events
//! once and hands them to every subscriber, so that a hundred subscribers
//! cost one read per commit, not a hundred. It reads when this replica
//! commits events, when another replica does (PostgreSQL's `NOTIFY`, sent in
//! the committing transaction, so it arrives after the commit), and every
//! 200 ms in case a notification was lost with a connection.
//!
//! The feed reads events by number from where it started, and numbers are
//! taken without gaps in commit order, so it publishes every event after its
//! start exactly once, in order. A subscriber joins it before reading what it
//! missed from the database: whatever commits while it reads reaches it
//! through the feed too (and is skipped by number if it was read already).

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyPool, Row};
use tokio::sync::{Notify, broadcast};

use super::{Event, LedgerError};

/// How often the feed looks for events no notification announced.
const POLL: Duration = Duration::from_millis(200);

/// The PostgreSQL channel replicas announce their events on.
pub(super) const CHANNEL: &str = "iapd_ledger_events";

/// The most events one read takes.
const PAGE: i64 = 1000;

/// Batches a subscriber may fall behind by before it reads from the database
/// again instead.
const BACKLOG: usize = 1024;

/// One read's events, or why the ledger could not be read.
pub(super) type Published = Result<Arc<[Event]>, String>;

/// Starts the feed of `pool`'s events, from the last event committed now.
/// `postgres_url` is the ledger's database when it is PostgreSQL, whose
/// other replicas' notifications the feed listens for.
pub(super) async fn spawn(
    pool: AnyPool,
    written: Arc<Notify>,
    postgres_url: Option<String>,
) -> broadcast::Sender<Published> {
    let (sender, _) = broadcast::channel(BACKLOG);
    // (Before the migrations of a new ledger there is no row: it starts at 0.)
    let start: i64 = sqlx::query("SELECT value FROM ledger_sequence WHERE name = 'events'")
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten()
        .and_then(|row| row.try_get("value").ok())
        .unwrap_or(0);
    let feed = sender.clone();
    let mut listener = match postgres_url {
        Some(url) => listen(&url).await,
        None => None,
    };
    tokio::spawn(async move {
        let mut after = start;
        loop {
            // Registered before the read, so a commit during it wakes the next.
            let woken = written.notified();
            match read(&pool, after).await {
                Ok(events) => {
                    let full = events.len() as i64 == PAGE;
                    if let Some(last) = events.last() {
                        after = last.seq;
                        let _ = feed.send(Ok(events.into()));
                    }
                    if full {
                        continue;
                    }
                }
                Err(err) if feed.receiver_count() > 0 => {
                    let _ = feed.send(Err(err.to_string()));
                }
                Err(_) => {}
            }
            let announced = async {
                match &mut listener {
                    // It reconnects by itself; what it missed meanwhile, the poll reads.
                    Some(listener) => {
                        let _ = listener.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = woken => {}
                () = announced => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    });
    sender
}

/// A connection listening for other replicas' events; without one the feed
/// polls.
async fn listen(url: &str) -> Option<sqlx::postgres::PgListener> {
    let mut listener = match sqlx::postgres::PgListener::connect(url).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for other replicas' ledger events; polling for them");
            return None;
        }
    };
    match listener.listen(CHANNEL).await {
        Ok(()) => Some(listener),
        Err(err) => {
            tracing::warn!(%err, "cannot listen for other replicas' ledger events; polling for them");
            None
        }
    }
}

async fn read(pool: &AnyPool, after: i64) -> Result<Vec<Event>, LedgerError> {
    let rows = sqlx::query(
        "SELECT seq, at_ms, app_id, user_id, kind, purchase_id, detail FROM ledger_events \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(PAGE)
    .fetch_all(pool)
    .await?;
    rows.iter().map(super::event_of).collect()
}
