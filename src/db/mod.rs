//! Database access: the bb8 pool of diesel-async connections, embedded migrations,
//! and the embedded PostgreSQL cluster of the default mode.

pub mod embedded;
pub mod migrate;
pub mod schema;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;

pub type DbPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
pub type PoolError = bb8::RunError<diesel_async::pooled_connection::PoolError>;
pub type Conn = AsyncPgConnection;

pub async fn connect_pool(url: &str, max_size: u32) -> anyhow::Result<DbPool> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
    let pool = bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(std::time::Duration::from_secs(10))
        .build(manager)
        .await?;
    Ok(pool)
}
