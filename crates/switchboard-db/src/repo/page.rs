//! Keyset pagination shared by the tenant lists (accounts, installs, API keys, agent sessions,
//! Bulk Data jobs, webhook endpoints).
//!
//! Every list is ordered by `(created_at, id)`. Ids are random (or chosen by the caller), so
//! ordering by id alone would be stable too, but `(created_at, id)` keeps the oldest-first order
//! the lists always had, and new rows land at the end of a walk in progress. The key is unique
//! (id is unique in the list's scope) and never changes, so "rows after the last key seen" neither
//! repeats nor skips a row that existed when the walk started, whatever is inserted meanwhile.

/// The backend of [`crate::AnyConnection`], for boxed (dynamically filtered) queries.
pub(crate) type AnyBackend = <crate::AnyConnection as diesel::Connection>::Backend;

/// The sort key of the last row of a page: the next page starts strictly after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub created_at: i64,
    pub id: String,
}

/// One page of a list: at most `limit` rows, and the key to continue from when more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub rows: Vec<T>,
    /// `None` on the last page.
    pub next: Option<After>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows read in list order (the extra row only says
    /// that another page follows; it is not returned).
    pub(crate) fn from_rows(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> After) -> Self {
        let limit = usize::try_from(limit).unwrap_or(0);
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(key)
        } else {
            None
        };
        Page { rows, next }
    }
}

/// `limit + 1`, the number of rows a page query reads.
pub(crate) fn fetch_count(limit: i64) -> i64 {
    limit.max(0).saturating_add(1)
}

/// Filters a boxed query to `(created_at, id) > (after.created_at, after.id)`, written as
/// `created_at >= c AND (created_at > c OR id > i)` so both backends bound an index range
/// with the first conjunct (row-value comparison is not in the diesel DSL).
macro_rules! after_key {
    ($query:expr, $created_at:expr, $id:expr, $after:expr) => {
        match $after {
            Some(a) => $query.filter(
                $created_at
                    .ge(a.created_at)
                    .and($created_at.gt(a.created_at).or($id.gt(a.id.clone()))),
            ),
            None => $query,
        }
    };
}
pub(crate) use after_key;

/// Reads one page of `$query`, a boxed query on the table whose DSL module is `$t`, already
/// filtered to the rows the list holds: at most `$limit` rows after `$after` in
/// `(created_at, id)` order, selected as `$row`, as a `Page<$row>`. `?` returns the query's
/// error from the enclosing function.
macro_rules! load_page {
    ($conn:expr, $query:expr, $t:ident, $row:ty, $after:expr, $limit:expr) => {{
        let limit: i64 = $limit;
        let rows = $crate::repo::page::after_key!($query, $t::created_at, $t::id, $after)
            .order(($t::created_at.asc(), $t::id.asc()))
            .limit($crate::repo::page::fetch_count(limit))
            .select(<$row>::as_select())
            .load::<$row>($conn)?;
        $crate::repo::page::Page::from_rows(rows, limit, |r: &$row| $crate::repo::page::After {
            created_at: r.created_at,
            id: r.id.clone(),
        })
    }};
}
pub(crate) use load_page;
