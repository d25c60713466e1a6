//! Placement: an instance goes to a schedulable, ready, online node with enough free cpu,
//! memory, storage and pod slots, counting what Podium has placed there (every instance
//! not yet TERMINATED, stopped ones included: their volumes stay on the node). Among the
//! nodes that fit, the one with the most free cpu (spreading load). Placements are taken
//! one at a time under a transaction-scoped advisory lock, so two replicas can never both
//! fill the last slot of a node.

use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use crate::state::AppState;

/// The advisory lock all placements take ("podium placement").
const PLACEMENT_LOCK: i64 = 0x706f_6469_756d_706c;

/// What Podium has placed on each node, but for the instances `except` selects: every
/// instance not yet TERMINATED (stopped ones keep their volumes there), with its plan's
/// resources.
fn used(except: &str) -> String {
    format!(
        "SELECT i.node_id, sum(p.cpu_milli) AS cpu, sum(p.memory_mb) AS mem,
                sum(p.storage_gb) AS storage, count(*) AS pods
         FROM service_instances i
         JOIN service_subscriptions s ON s.id = i.subscription_id
         JOIN service_plans p ON p.id = s.plan_id
         WHERE i.node_id IS NOT NULL AND i.status <> 'TERMINATED' AND i.id NOT IN ({except})
         GROUP BY i.node_id"
    )
}

/// Whether node `n`, with `u` used on it, has room for `need` (cpu, memory, storage, a pod).
const FITS: &str = "n.cpu_cores::bigint * 1000 - COALESCE(u.cpu, 0) >= need.cpu_milli
    AND n.memory_mb - COALESCE(u.mem, 0) >= need.memory_mb
    AND n.storage_mb - COALESCE(u.storage, 0) * 1024 >= need.storage_gb::bigint * 1024
    AND n.max_pods - COALESCE(u.pods, 0) >= 1";

#[derive(QueryableByName, Debug)]
pub struct Placed {
    #[diesel(sql_type = SqlUuid)]
    pub node_id: Uuid,
    #[diesel(sql_type = Text)]
    pub node_name: String,
    /// The instance's generation after placing it.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub generation: i64,
}

/// Places the instance if it is still unplaced, still wanted running at the `generation`
/// the pass read, and a node fits; `None` otherwise (no room, or the instance changed: its
/// own pass comes). An instance another pass placed meanwhile keeps that node.
pub async fn place(
    state: &AppState,
    instance_id: Uuid,
    generation: i64,
) -> anyhow::Result<Option<Placed>> {
    let mut conn = state.pool.get().await?;
    let placed = conn
        .transaction(async |conn| {
            diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                .bind::<diesel::sql_types::BigInt, _>(PLACEMENT_LOCK)
                .execute(conn)
                .await?;
            let already = diesel::sql_query(
                "SELECT n.id AS node_id, n.name AS node_name, i.generation
                 FROM service_instances i JOIN worker_nodes n ON n.id = i.node_id
                 WHERE i.id = $1 AND i.generation = $2",
            )
            .bind::<SqlUuid, _>(instance_id)
            .bind::<diesel::sql_types::BigInt, _>(generation)
            .get_result::<Placed>(conn)
            .await
            .optional()?;
            if already.is_some() {
                return Ok(already);
            }
            diesel::sql_query(format!(
                "WITH need AS (
                     SELECT p.cpu_milli, p.memory_mb, p.storage_gb
                     FROM service_instances i
                     JOIN service_subscriptions s ON s.id = i.subscription_id
                     JOIN service_plans p ON p.id = s.plan_id
                     WHERE i.id = $1 AND i.node_id IS NULL AND i.generation = $2
                       AND i.desired_state = 'RUNNING'),
                 used AS ({used}),
                 chosen AS (
                     SELECT n.id, n.name
                     FROM worker_nodes n CROSS JOIN need LEFT JOIN used u ON u.node_id = n.id
                     WHERE n.status = 'ACTIVE' AND n.is_ready AND n.is_schedulable AND {FITS}
                     ORDER BY n.cpu_cores::bigint * 1000 - COALESCE(u.cpu, 0) DESC, n.name
                     LIMIT 1)
                 UPDATE service_instances i
                 SET node_id = chosen.id, placed_at = now(), generation = i.generation + 1
                 FROM chosen WHERE i.id = $1 AND i.node_id IS NULL AND i.generation = $2
                 RETURNING chosen.id AS node_id, chosen.name AS node_name, i.generation",
                used = used("$1")
            ))
            .bind::<SqlUuid, _>(instance_id)
            .bind::<diesel::sql_types::BigInt, _>(generation)
            .get_result::<Placed>(conn)
            .await
            .optional()
        })
        .await?;
    Ok(placed)
}

#[derive(QueryableByName)]
struct Fits {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    fits: bool,
}

/// Whether the node a subscription's instance is placed on has room for it on another
/// plan (inside the plan change's transaction, under the placement lock so that no
/// placement takes the room meanwhile). An unplaced instance always fits here: placement
/// will look for room for the new plan.
pub async fn room_for_plan(
    conn: &mut crate::db::Conn,
    subscription_id: Uuid,
    plan_id: Uuid,
) -> diesel::QueryResult<bool> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(PLACEMENT_LOCK)
        .execute(conn)
        .await?;
    let fits = diesel::sql_query(format!(
        "WITH me AS (
             SELECT id, node_id FROM service_instances
             WHERE subscription_id = $1 AND node_id IS NOT NULL AND status <> 'TERMINATED'),
         need AS (SELECT cpu_milli, memory_mb, storage_gb FROM service_plans WHERE id = $2),
         used AS ({used})
         SELECT {FITS} AS fits
         FROM me JOIN worker_nodes n ON n.id = me.node_id CROSS JOIN need
         LEFT JOIN used u ON u.node_id = n.id",
        used = used("SELECT id FROM me")
    ))
    .bind::<SqlUuid, _>(subscription_id)
    .bind::<SqlUuid, _>(plan_id)
    .get_result::<Fits>(conn)
    .await
    .optional()?;
    Ok(fits.is_none_or(|f| f.fits))
}
