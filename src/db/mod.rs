//! Database access: the bb8 pool of diesel-async connections, embedded migrations,
//! and the embedded PostgreSQL cluster of the default mode.

pub mod embedded;
pub mod migrate;
pub mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::connection::InstrumentationEvent;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::FutureExt;

/// Maps a fieldless enum to a TEXT column holding its GraphQL name, e.g. `"NOT_READY"`.
#[macro_export]
macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($ty))),
                }
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $ty {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $ty {
            fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = <String as diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg>>::from_sql(bytes)?;
                Ok(text.parse::<$ty>()?)
            }
        }
    };
}

pub type DbPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
pub type PoolError = bb8::RunError<diesel_async::pooled_connection::PoolError>;
pub type Conn = AsyncPgConnection;

/// Counts the statements the pool's connections run (for `/metrics`-style figures and
/// the tests that prove a page costs a constant number of queries).
#[derive(Clone, Default, Debug)]
pub struct QueryCounter(Arc<AtomicU64>);

impl QueryCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub async fn connect_pool(url: &str, max_size: u32) -> anyhow::Result<DbPool> {
    connect_counted_pool(url, max_size, QueryCounter::default()).await
}

pub async fn connect_counted_pool(
    url: &str,
    max_size: u32,
    counter: QueryCounter,
) -> anyhow::Result<DbPool> {
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    // A broken connection fails its query and is dropped; a `SELECT 1` per checkout costs
    // a round trip on every request.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let counter = counter.clone();
        async move {
            let mut conn = AsyncPgConnection::establish(url).await?;
            conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                if let InstrumentationEvent::StartQuery { .. } = event {
                    counter.0.fetch_add(1, Ordering::Relaxed);
                }
            });
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    let pool = bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(std::time::Duration::from_secs(10))
        .build(manager)
        .await?;
    Ok(pool)
}
