//! The event outbox: events enqueued in committed transactions reach every replica's
//! subscribers once, in order; rolled-back ones never; out-of-order commits are not lost;
//! and wake-up NOTIFYs are coalesced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use podium::db::schema::event_outbox;
use podium::events::{self, Message, outbox};
use serde_json::json;
use tokio::sync::broadcast;

use crate::helpers::*;

const TOPIC: &str = "test.outbox";

/// The names of the outbox test events one replica's subscriber received, in order.
struct Seen {
    rx: broadcast::Receiver<Arc<Message>>,
    names: Vec<String>,
}

impl Seen {
    fn new(app: &TestApp) -> Self {
        Seen {
            rx: app.state.events.subscribe(),
            names: Vec::new(),
        }
    }

    /// Receives until `name` has arrived (failing after 10 s); returns everything so far.
    async fn until(&mut self, name: &str) -> &[String] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.names.iter().any(|n| n == name) {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Ok(message)) => message,
                Ok(Err(e)) => panic!("event bus: {e}"),
                Err(_) => panic!("{name:?} never arrived; got {:?}", self.names),
            };
            if message.topic == TOPIC {
                self.names
                    .push(message.payload["name"].as_str().unwrap().to_string());
            }
        }
        &self.names
    }
}

/// Commits one transaction on `app` that enqueues `names`, then wakes the tailers.
async fn commit(app: &TestApp, names: &[String]) {
    let mut conn = app.state.pool.get().await.unwrap();
    conn.transaction(async |c| {
        if let [one] = names {
            events::enqueue(c, TOPIC, &json!({ "name": one })).await
        } else {
            let messages: Vec<Message> = names
                .iter()
                .map(|n| Message::new(TOPIC.into(), json!({ "name": n })))
                .collect();
            events::enqueue_all(c, &messages).await
        }
    })
    .await
    .unwrap();
    app.state.events.outbox_written();
}

async fn commit_one(app: &TestApp, name: &str) {
    commit(app, &[name.to_string()]).await
}

async fn connect(app: &TestApp) -> AsyncPgConnection {
    AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap()
}

async fn sql(conn: &mut AsyncPgConnection, statement: &str) {
    diesel::sql_query(statement).execute(conn).await.unwrap();
}

/// The newest outbox id `conn` can see (its own uncommitted rows included).
async fn newest_id(conn: &mut AsyncPgConnection) -> i64 {
    event_outbox::table
        .select(event_outbox::id)
        .order(event_outbox::id.desc())
        .first(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_events_reach_every_replica_in_order_exactly_once() {
    let url = fresh_database(true).await;
    let a = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let b = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let (mut seen_a, mut seen_b) = (Seen::new(&a), Seen::new(&b));

    // One to three events per transaction, written through either replica.
    let mut expected = Vec::new();
    for t in 0..20 {
        let names: Vec<String> = (0..=t % 3).map(|i| format!("t{t}-e{i}")).collect();
        expected.extend(names.clone());
        commit(if t % 2 == 0 { &a } else { &b }, &names).await;
    }
    commit_one(&a, "end").await;
    expected.push("end".into());

    assert_eq!(
        seen_a.until("end").await,
        expected,
        "on the writing replica"
    );
    assert_eq!(seen_b.until("end").await, expected, "on the other replica");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_outbox_writers_deliver_each_event_once_on_each_replica() {
    let url = fresh_database(true).await;
    let a = Arc::new(spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await);
    let b = Arc::new(spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await);
    let (mut seen_a, mut seen_b) = (Seen::new(&a), Seen::new(&b));

    let writers: Vec<_> = (0..4)
        .map(|w| {
            let app = if w % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                for i in 0..25 {
                    commit_one(&app, &format!("w{w}-{i:02}")).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    commit_one(&b, "end").await;

    for (replica, seen) in [("a", &mut seen_a), ("b", &mut seen_b)] {
        let names = seen.until("end").await.to_vec();
        assert_eq!(names.len(), 101, "replica {replica}: {names:?}");
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 101, "replica {replica} got duplicates");
        // Each writer's transactions committed one after another: their events stay in order.
        for w in 0..4 {
            let mine: Vec<&String> = names
                .iter()
                .filter(|n| n.starts_with(&format!("w{w}-")))
                .collect();
            let in_order: Vec<String> = (0..25).map(|i| format!("w{w}-{i:02}")).collect();
            assert_eq!(
                mine,
                in_order.iter().collect::<Vec<_>>(),
                "replica {replica}"
            );
        }
        assert_eq!(names.last().unwrap(), "end");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_event_of_a_rolled_back_transaction_is_never_delivered() {
    let app = spawn_app().await;
    let mut seen = Seen::new(&app);

    // Rolled back while later ids commit and are delivered.
    let mut open = connect(&app).await;
    sql(&mut open, "BEGIN").await;
    events::enqueue(&mut open, TOPIC, &json!({ "name": "doomed-open" }))
        .await
        .unwrap();
    commit_one(&app, "kept").await;
    seen.until("kept").await;
    sql(&mut open, "ROLLBACK").await;

    // Rolled back by an error in a diesel transaction.
    let mut conn = app.state.pool.get().await.unwrap();
    let failed = conn
        .transaction(async |c| {
            events::enqueue(c, TOPIC, &json!({ "name": "doomed-failed" })).await?;
            Err::<(), _>(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(failed.is_err());
    app.state.events.outbox_written();

    commit_one(&app, "end").await;
    assert_eq!(seen.until("end").await, ["kept", "end"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_id_that_commits_after_a_later_one_is_still_delivered_once() {
    let url = fresh_database(true).await;
    let a = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let b = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let (mut seen_a, mut seen_b) = (Seen::new(&a), Seen::new(&b));

    // Transaction A takes id N and stays open; B takes N+1 and commits.
    let mut txn_a = connect(&a).await;
    sql(&mut txn_a, "BEGIN").await;
    events::enqueue(&mut txn_a, TOPIC, &json!({ "name": "first" }))
        .await
        .unwrap();
    let first_id = newest_id(&mut txn_a).await;
    let mut txn_b = connect(&a).await;
    sql(&mut txn_b, "BEGIN").await;
    events::enqueue(&mut txn_b, TOPIC, &json!({ "name": "second" }))
        .await
        .unwrap();
    let second_id = newest_id(&mut txn_b).await;
    assert!(first_id < second_id, "{first_id} < {second_id}");
    sql(&mut txn_b, "COMMIT").await;
    a.state.events.outbox_written();
    // Both replicas have read past N+1 before N commits.
    seen_a.until("second").await;
    seen_b.until("second").await;

    sql(&mut txn_a, "COMMIT").await;
    a.state.events.outbox_written();
    seen_a.until("first").await;
    seen_b.until("first").await;

    commit_one(&b, "end").await;
    for seen in [&mut seen_a, &mut seen_b] {
        assert_eq!(seen.until("end").await, ["second", "first", "end"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_id_taken_before_its_transaction_had_an_xid_is_still_delivered() {
    // An INSERT draws its id before its transaction gets an xid: in between, a later id
    // can commit and be read, and the earlier row's xid then postdates the tailer's
    // snapshot. Modelled by drawing the id first and inserting it afterwards.
    let app = spawn_app().await;
    let mut seen = Seen::new(&app);
    let mut conn = connect(&app).await;
    #[derive(diesel::QueryableByName)]
    struct Drawn {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let drawn: Drawn =
        diesel::sql_query("SELECT nextval(pg_get_serial_sequence('event_outbox', 'id')) AS id")
            .get_result(&mut conn)
            .await
            .unwrap();
    commit_one(&app, "later").await;
    seen.until("later").await;
    diesel::sql_query(
        "INSERT INTO event_outbox (id, topic, payload) OVERRIDING SYSTEM VALUE
         VALUES ($1, $2, '{\"name\": \"earlier\"}')",
    )
    .bind::<diesel::sql_types::BigInt, _>(drawn.id)
    .bind::<diesel::sql_types::Text, _>(TOPIC)
    .execute(&mut conn)
    .await
    .unwrap();
    app.state.events.outbox_written();
    commit_one(&app, "end").await;
    assert_eq!(seen.until("end").await, ["later", "earlier", "end"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_events_arrive_without_a_wake_up_by_polling() {
    let url = fresh_database(true).await;
    let a = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let b = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let (mut seen_a, mut seen_b) = (Seen::new(&a), Seen::new(&b));
    // A writer that forgets `outbox_written`: found by the once-a-second read.
    let mut conn = a.state.pool.get().await.unwrap();
    events::enqueue(&mut conn, TOPIC, &json!({ "name": "quiet" }))
        .await
        .unwrap();
    assert_eq!(seen_a.until("quiet").await, ["quiet"]);
    assert_eq!(seen_b.until("quiet").await, ["quiet"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_tailer_reconnects_where_it_left_off() {
    let app = spawn_app().await;
    let mut seen = Seen::new(&app);
    commit_one(&app, "before").await;
    seen.until("before").await;

    let mut admin = connect(&app).await;
    #[derive(diesel::QueryableByName)]
    struct Killed {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let killed: Killed = diesel::sql_query(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'podium-outbox'",
    )
    .get_result(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed.n, 1, "the tailer has a connection of its own");
    // Written while the tailer may be down: found after it reconnects, nothing repeated.
    commit_one(&app, "during").await;
    commit_one(&app, "end").await;
    assert_eq!(seen.until("end").await, ["before", "during", "end"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_outbox_transactions_send_only_a_few_notifies() {
    const EVERY_MS: u128 = 100;
    let app = Arc::new(spawn_app_with(&[("PODIUM_OUTBOX_NOTIFY_MS", "100")]).await);
    let mut seen = Seen::new(&app);
    let mut listener = connect(&app).await;
    sql(&mut listener, &format!("LISTEN {}", outbox::WAKE_CHANNEL)).await;

    let started = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let app = app.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    commit_one(&app, &format!("w{w}-{i}")).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    commit_one(&app, "end").await;
    assert_eq!(seen.until("end").await.len(), 201);

    // Count the wake-ups until none has come for three intervals (a trailing one may be due).
    let mut notifies = 0u128;
    let mut stream = std::pin::pin!(listener.notifications_stream());
    while let Ok(Some(n)) =
        tokio::time::timeout(Duration::from_millis(3 * EVERY_MS as u64), stream.next()).await
    {
        assert_eq!(n.unwrap().channel, outbox::WAKE_CHANNEL);
        notifies += 1;
    }
    let elapsed = started.elapsed().as_millis();
    // At most one per interval, plus the first; far fewer than the 201 transactions.
    assert!(notifies >= 1, "the other replicas were never woken");
    assert!(
        notifies <= elapsed / EVERY_MS + 1,
        "{notifies} NOTIFYs in {elapsed} ms"
    );
    assert!(notifies < 201, "{notifies} NOTIFYs for 201 transactions");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_rows_older_than_the_retention_are_pruned() {
    let app = spawn_app().await;
    let mut conn = connect(&app).await;
    sql(
        &mut conn,
        "INSERT INTO event_outbox (topic, payload, created_at)
         SELECT 'test.old', '{}', now() - interval '2 hours' FROM generate_series(1, 3)",
    )
    .await;
    for name in ["young-1", "young-2"] {
        events::enqueue(&mut conn, TOPIC, &json!({ "name": name }))
            .await
            .unwrap();
    }
    assert_eq!(
        outbox::prune(&mut conn, outbox::RETENTION).await.unwrap(),
        3
    );
    let left: Vec<String> = event_outbox::table
        .select(event_outbox::topic)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, [TOPIC, TOPIC]);
    assert_eq!(
        outbox::prune(&mut conn, outbox::RETENTION).await.unwrap(),
        0
    );
}
