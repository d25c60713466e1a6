//! The event outbox: live events for high-rate writers (renewals, provisioning status),
//! without a `pg_notify` per transaction (whose commit takes a global lock, see
//! ARCHITECTURE.md, "Live events").
//!
//! - A writer calls [`enqueue`] inside its business transaction: one INSERT into
//!   `event_outbox`, so the event exists exactly when the change commits. After the commit
//!   it calls `EventBus::outbox_written()`.
//! - Every replica runs one tailer ([`EventBus::spawn_outbox_tailer`]) that reads new rows
//!   and delivers each to its in-process bus (`EventBus::deliver`), in id order.
//! - The tailer is woken by `outbox_written()` in its own process, by a NOTIFY on
//!   [`WAKE_CHANNEL`] from other replicas, and by a poll every second (a missed wake-up
//!   only delays an event). It works in rounds at most `PODIUM_OUTBOX_NOTIFY_MS` apart:
//!   one NOTIFY if its process enqueued since the last, then one read. So a replica sends
//!   at most one NOTIFY per interval however many transactions enqueued, in a tiny
//!   transaction of its own (never the writers'), and a burst of wake-ups costs one read.
//! - A replica starts at the newest committed row (no replay). Rows older than an hour are
//!   pruned by every tailer (idempotent, `SKIP LOCKED`).
//!
//! ## Ids that commit out of order
//!
//! An id is handed out at INSERT, not at commit: a transaction holding id N may commit after
//! N+1 was read, so "read ids above the last one read" would lose N. The tailer therefore
//! remembers, with its position `max_id`, the snapshot its last read was taken with (its
//! xmax and list of in-progress transactions), and each read runs in a REPEATABLE READ
//! transaction (one snapshot) that returns
//! - rows with `id <= max_id` whose transaction was invisible to the previous snapshot
//!   (`xact_id` in its in-progress list or at or above its xmax) and is visible now: they
//!   committed since, so nobody has delivered them; and
//! - rows with `id > max_id`, in id order (up to a batch).
//!
//! Invariant after each read: every row with `id <= max_id` visible in the remembered
//! snapshot has been delivered, and none above it. Snapshots only ever see more committed
//! transactions, so each row is delivered exactly once, by the first read that sees it,
//! however long its transaction ran; rolled-back rows are never visible. This costs no
//! timeouts and no waiting for older transactions: a late row is delivered when it commits,
//! after higher ids that committed before it. Events about one entity written under that
//! entity's row lock (a wallet's balance) get their ids in lock order and are never
//! reordered. `xact_id` is the top-level transaction id (savepoints included), indexed so
//! that finding late rows costs only the rows of the transactions in question.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::sql_types::{Array, BigInt, Integer, Interval};
use diesel::{
    BoolExpressionMethods, ExpressionMethods, QueryDsl, QueryResult, Queryable, QueryableByName,
    Selectable, SelectableHelper,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{EventBus, Message};
use crate::db::Conn;
use crate::db::schema::event_outbox;

/// The channel replicas NOTIFY (empty payload) after their processes enqueued events.
pub const WAKE_CHANNEL: &str = "podium_outbox";

/// The fallback: a replica reads the outbox at least this often.
const POLL: Duration = Duration::from_secs(1);
/// Rows read per statement (more are read right away).
const BATCH: i64 = 1000;
/// Rows older than this are deleted.
pub const RETENTION: Duration = Duration::from_secs(3600);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i32 = 5000;

/// Adds an event on `topic` to the outbox, inside the caller's transaction: it is delivered
/// to every replica's subscribers once that transaction commits, never if it rolls back.
/// No NOTIFY: the cost is one INSERT, so high-rate writers use this rather than
/// `events::publish`. After the commit, call `state.events.outbox_written()` so that
/// replicas read it at once (else they find it within a second). No size limit on payloads.
pub async fn enqueue(conn: &mut Conn, topic: &str, payload: &impl Serialize) -> QueryResult<()> {
    let payload = serde_json::to_value(payload).expect("events serialize");
    diesel::insert_into(event_outbox::table)
        .values((
            event_outbox::topic.eq(topic),
            event_outbox::payload.eq(payload),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// [`enqueue`] for several events in one statement, delivered in the given order.
pub async fn enqueue_all(conn: &mut Conn, messages: &[Message]) -> QueryResult<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = messages
        .iter()
        .map(|m| {
            (
                event_outbox::topic.eq(m.topic.as_str()),
                event_outbox::payload.eq(&m.payload),
            )
        })
        .collect();
    // A multi-row VALUES assigns ids in row order.
    diesel::insert_into(event_outbox::table)
        .values(rows)
        .execute(conn)
        .await
        .map(drop)
}

/// Deletes up to `PRUNE_BATCH` rows created more than `older_than` ago, oldest first;
/// returns how many. It stops at the oldest young row, so it reads only the rows it
/// deletes (tailers repeat it, a batch per round, until a batch comes back short). A
/// transaction left open for longer than `older_than` may lose its events.
pub async fn prune(conn: &mut Conn, older_than: Duration) -> QueryResult<usize> {
    let older_than = diesel::data_types::PgInterval::from_microseconds(
        i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX),
    );
    diesel::sql_query(
        // An array, not `IN (subquery)`: a generic plan may hash-join the latter against
        // the whole table.
        "DELETE FROM event_outbox WHERE id = ANY(ARRAY(
            SELECT id FROM event_outbox
            WHERE created_at < now() - $1
              AND id < coalesce(
                  (SELECT id FROM event_outbox WHERE created_at >= now() - $1 ORDER BY id LIMIT 1),
                  9223372036854775807)
            ORDER BY id LIMIT $2
            FOR UPDATE SKIP LOCKED))",
    )
    .bind::<Interval, _>(older_than)
    .bind::<Integer, _>(PRUNE_BATCH)
    .execute(conn)
    .await
}

/// How a process tells its tailer about outbox writes.
#[derive(Default)]
pub(super) struct Signals {
    /// Wakes the tailer: a local write or another replica's NOTIFY.
    wake: Notify,
    /// This process enqueued since the last NOTIFY it sent.
    notify_pending: AtomicBool,
    /// Set once the tailer has its starting position.
    tailing: watch::Sender<bool>,
}

impl Signals {
    pub(super) fn woken_remotely(&self) {
        self.wake.notify_one();
    }
}

/// Where the tailer stands: see the module documentation.
#[derive(Clone, Debug)]
struct Cursor {
    max_id: i64,
    /// The previous read's snapshot: its xmax and in-progress transactions.
    xmax: i64,
    xip: Vec<i64>,
}

#[derive(QueryableByName)]
struct Start {
    #[diesel(sql_type = BigInt)]
    max_id: i64,
    #[diesel(sql_type = BigInt)]
    xmax: i64,
    #[diesel(sql_type = Array<BigInt>)]
    xip: Vec<i64>,
}

/// The statement's snapshot (the transaction's, under REPEATABLE READ).
const SNAPSHOT: &str = "SELECT (SELECT coalesce(max(id), 0) FROM event_outbox) AS max_id,
        pg_snapshot_xmax(s)::text::bigint AS xmax,
        ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x) AS xip
    FROM pg_current_snapshot() AS s";

#[derive(Queryable, Selectable)]
#[diesel(table_name = event_outbox)]
struct Row {
    id: i64,
    topic: String,
    payload: serde_json::Value,
}

/// The newest row committed now (everything up to it counts as history).
async fn start(conn: &mut Conn) -> QueryResult<Cursor> {
    let s: Start = diesel::sql_query(SNAPSHOT).get_result(conn).await?;
    Ok(Cursor {
        max_id: s.max_id,
        xmax: s.xmax,
        xip: s.xip,
    })
}

/// One read: the rows to deliver, in delivery order, and the cursor after them; `full`
/// when more rows may be waiting.
async fn read(conn: &mut Conn, cursor: &Cursor) -> QueryResult<(Vec<Row>, Cursor, bool)> {
    let cursor = cursor.clone();
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run(async move |conn| {
            use event_outbox::dsl as o;
            // First statement: fixes the snapshot every statement here reads with.
            let now: Start = diesel::sql_query(SNAPSHOT).get_result(conn).await?;
            let mut rows: Vec<Row> = o::event_outbox
                .filter(o::id.le(cursor.max_id))
                // Bounded above by the current xmax (rows above it are invisible anyway),
                // so that a generic plan still estimates few rows and uses the xact_id
                // index instead of scanning every id up to max_id.
                .filter(
                    o::xact_id
                        .ge(cursor.xmax)
                        .and(o::xact_id.lt(now.xmax))
                        .or(o::xact_id.eq_any(&cursor.xip)),
                )
                .order(o::id)
                .select(Row::as_select())
                .load(conn)
                .await?;
            let newer: Vec<Row> = o::event_outbox
                .filter(o::id.gt(cursor.max_id))
                .order(o::id)
                .limit(BATCH)
                .select(Row::as_select())
                .load(conn)
                .await?;
            let full = newer.len() as i64 == BATCH;
            let max_id = newer.last().map_or(cursor.max_id, |r| r.id);
            rows.extend(newer);
            let next = Cursor {
                max_id,
                xmax: now.xmax,
                xip: now.xip,
            };
            Ok((rows, next, full))
        })
        .await
}

impl EventBus {
    /// Call after committing a transaction that used `events::enqueue`: wakes this
    /// replica's tailer now and the other replicas with a coalesced NOTIFY. Cheap; never
    /// blocks.
    pub fn outbox_written(&self) {
        self.outbox.notify_pending.store(true, Ordering::Release);
        self.outbox.wake.notify_one();
    }

    /// Waits until the outbox tailer knows where it starts (bounded): events enqueued
    /// after that are delivered.
    pub async fn wait_tailing(&self, timeout: Duration) -> bool {
        let mut rx = self.outbox.tailing.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|up| *up))
            .await
            .is_ok()
    }

    /// Tails the outbox on a connection of its own (reconnecting with backoff, keeping its
    /// position) until `shutdown` flips: reads when woken or every second, and sends this
    /// replica's wake-up NOTIFYs; at most one read and one NOTIFY per `interval`.
    pub fn spawn_outbox_tailer(
        &self,
        url: String,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut tailer = Tailer {
                bus,
                interval,
                cursor: None,
                next_prune: Instant::now() + PRUNE_EVERY,
            };
            let mut backoff = Duration::from_millis(200);
            loop {
                tokio::select! {
                    result = tailer.run(&url, &mut backoff) => {
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "outbox tailer lost its connection; reconnecting");
                        }
                    }
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        })
    }
}

struct Tailer {
    bus: EventBus,
    /// The shortest time between two rounds (NOTIFY and read).
    interval: Duration,
    /// Survives reconnections, so that nothing is missed or repeated.
    cursor: Option<Cursor>,
    next_prune: Instant,
}

impl Tailer {
    async fn run(&mut self, url: &str, backoff: &mut Duration) -> anyhow::Result<()> {
        let mut conn = AsyncPgConnection::establish(url).await?;
        diesel::sql_query("SET application_name = 'podium-outbox'")
            .execute(&mut conn)
            .await?;
        let signals = self.bus.outbox.clone();
        if self.cursor.is_none() {
            self.cursor = Some(start(&mut conn).await?);
            signals.tailing.send_replace(true);
        }
        *backoff = Duration::from_millis(200);
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // One round per interval at most: a burst of writes and wake-ups shares one
            // NOTIFY and one read.
            let round = Instant::now();
            // Cleared before the NOTIFY: a write whose `outbox_written` comes after this
            // sets it again, so every enqueueing commit is followed by a NOTIFY sent later.
            if signals.notify_pending.swap(false, Ordering::AcqRel) {
                let sent = diesel::sql_query(format!("NOTIFY {WAKE_CHANNEL}"))
                    .execute(&mut conn)
                    .await;
                if sent.is_err() {
                    signals.notify_pending.store(true, Ordering::Release);
                }
                sent?;
            }
            let mut more = self.deliver(&mut conn).await?;
            // One batch per round, so that a large prune never holds up delivery for long.
            if round >= self.next_prune {
                let pruned = prune(&mut conn, RETENTION).await?;
                if pruned < PRUNE_BATCH as usize {
                    self.next_prune = round + PRUNE_EVERY;
                } else {
                    more = true;
                }
                if pruned > 0 {
                    tracing::debug!(rows = pruned, "outbox rows pruned");
                }
            }
            if !more {
                tokio::select! {
                    _ = signals.wake.notified() => {}
                    _ = poll.tick() => {}
                }
            }
            tokio::time::sleep_until(round + self.interval).await;
        }
    }

    /// Reads once and delivers what it found; returns whether more may be waiting.
    async fn deliver(&mut self, conn: &mut Conn) -> anyhow::Result<bool> {
        let cursor = self.cursor.as_ref().expect("started");
        let (rows, next, full) = read(conn, cursor).await?;
        // Delivering and moving on happen with no await in between: a cancelled task
        // can't deliver a row twice or skip one.
        for row in rows {
            tracing::trace!(id = row.id, topic = %row.topic, "outbox event");
            self.bus.deliver(Message::new(row.topic, row.payload));
        }
        self.cursor = Some(next);
        Ok(full)
    }
}
