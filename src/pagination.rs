//! Keyset pagination shared by every list: `first` (1..=100, default 20) and an opaque
//! `after` cursor encoding (created_at, id) of the last row seen.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::db::{Conn, DbPool};
use crate::error::{AppError, AppResult};

pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;

/// What a small list without pagination (a service's plans, the categories) is
/// assumed to hold when costing a query.
pub const SMALL_LIST_COST: usize = 5;

/// Query cost of a paginated list: its page size (`first`, as the resolver will read
/// it) times the cost of its selection, as GitHub and Shopify count.
pub fn page_cost(first: Option<i32>, child_complexity: usize) -> usize {
    let size = first.map_or(DEFAULT_PAGE_SIZE, |n| {
        n.clamp(1, MAX_PAGE_SIZE as i32) as usize
    });
    size.saturating_mul(child_complexity)
}

/// Query cost of a small list without pagination.
pub fn small_list_cost(child_complexity: usize) -> usize {
    SMALL_LIST_COST.saturating_mul(child_complexity)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn new(created_at: DateTime<Utc>, id: Uuid) -> Self {
        Cursor { created_at, id }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}:{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(s: &str) -> AppResult<Self> {
        let bad = || AppError::field("after", "is not a valid cursor");
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (micros, id) = raw.split_once(':').ok_or_else(bad)?;
        let created_at =
            DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
        Ok(Cursor {
            created_at,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// Newest first, after the cursor, one row beyond the page (to tell whether more
/// follow): the keyset page of a boxed query on a table with `created_at` and `id`.
#[macro_export]
macro_rules! newest_first_page {
    ($query:expr, $table:ident, $page:expr) => {{
        let mut query = $query;
        if let Some(after) = &$page.after {
            // `created_at <= cursor` is what lets an index on (created_at, id) start at the
            // cursor instead of scanning every newer row; the rest breaks the tie.
            query = query
                .filter($table::created_at.le(after.created_at))
                .filter(
                    $table::created_at
                        .lt(after.created_at)
                        .or($table::id.lt(after.id)),
                );
        }
        query
            .order(($table::created_at.desc(), $table::id.desc()))
            .limit($page.first as i64 + 1)
    }};
}

#[derive(Debug, Clone)]
pub struct PageArgs {
    pub first: usize,
    pub after: Option<Cursor>,
}

impl PageArgs {
    pub fn new(first: Option<i32>, after: Option<&str>) -> AppResult<Self> {
        let first = match first {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if (1..=MAX_PAGE_SIZE as i32).contains(&n) => n as usize,
            Some(_) => {
                return Err(AppError::field(
                    "first",
                    format!("must be between 1 and {MAX_PAGE_SIZE}"),
                ));
            }
        };
        let after = after.map(Cursor::decode).transpose()?;
        Ok(PageArgs { first, after })
    }
}

/// One page of a list, with the total of the whole (filtered) list.
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_next_page: bool,
    pub total: Total,
}

impl<T> Page<T> {
    /// `rows` was fetched with one extra row beyond `args.first`.
    pub fn from_rows(mut rows: Vec<T>, args: &PageArgs, total: Total) -> Self {
        let has_next_page = rows.len() > args.first;
        rows.truncate(args.first);
        Page {
            items: rows,
            has_next_page,
            total,
        }
    }
}

type Count = Arc<dyn Fn() -> BoxFuture<'static, AppResult<i64>> + Send + Sync>;

/// The size of a whole list. A `count(*)` scans what the page skipped, so it runs only
/// when a client asks for `totalCount` (and at most once per page).
pub struct Total {
    value: OnceCell<i64>,
    count: Option<Count>,
}

impl Total {
    pub fn known(n: i64) -> Self {
        Total {
            value: OnceCell::new_with(Some(n)),
            count: None,
        }
    }

    /// Counted on a pooled connection with `count(conn, &filter)` when first asked for.
    pub fn deferred<F: Send + Sync + 'static>(
        pool: &DbPool,
        filter: F,
        count: for<'c> fn(&'c mut Conn, &'c F) -> BoxFuture<'c, diesel::QueryResult<i64>>,
    ) -> Self {
        let (pool, filter) = (pool.clone(), Arc::new(filter));
        let count: Count = Arc::new(move || {
            let (pool, filter) = (pool.clone(), filter.clone());
            Box::pin(async move {
                let mut conn = pool.get().await?;
                Ok(count(&mut conn, &filter).await?)
            })
        });
        Total {
            value: OnceCell::new(),
            count: Some(count),
        }
    }

    pub async fn get(&self) -> AppResult<i64> {
        let count = self.count.clone();
        self.value
            .get_or_try_init(|| async move {
                match count {
                    Some(count) => count().await,
                    None => Ok(0),
                }
            })
            .await
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = Cursor::new(
            DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            Uuid::new_v4(),
        );
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("garbage!").is_err());
    }

    #[test]
    fn page_size_is_bounded() {
        assert_eq!(PageArgs::new(None, None).unwrap().first, 20);
        assert!(PageArgs::new(Some(0), None).is_err());
        assert!(PageArgs::new(Some(101), None).is_err());
    }
}
