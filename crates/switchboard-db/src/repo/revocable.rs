//! The lookups shared by the tables of revocable credentials a tenant owns (`api_keys`,
//! `agent_sessions`): each row has `id`, `tenant_id`, `created_at`, a nullable `revoked_at`,
//! and a unique column holding the SHA-256 of its secret, which identifies it without a
//! tenant. Revocation sets `revoked_at`; rows are never deleted by these functions.

/// Defines, in the repository module of such a table, `find_active_by_hash`, `list_page`,
/// `find` and `revoke`, typed by diesel on that table:
/// `revocable_rows!(table, Row, hash_column, "noun");` where `Row` is the table's
/// `Selectable` row struct and `noun` names one row in the generated docs.
macro_rules! revocable_rows {
    ($table:ident, $row:ty, $hash:ident, $noun:literal) => {
        #[doc = concat!("The ", $noun, " whose `", stringify!($hash), "` is `", stringify!($hash), "`, unless revoked")]
        /// (unscoped: the hash is what identifies the tenant).
        pub fn find_active_by_hash(
            conn: &mut $crate::AnyConnection,
            $hash: &str,
        ) -> Result<Option<$row>, $crate::DbError> {
            use diesel::prelude::*;
            use $crate::schema::$table::dsl as t;
            Ok(t::$table
                .filter(t::$hash.eq($hash))
                .filter(t::revoked_at.is_null())
                .select(<$row>::as_select())
                .first(conn)
                .optional()?)
        }

        #[doc = concat!("One page of the tenant's ", $noun, "s that are not revoked, in `(created_at, id)`")]
        /// order, starting after `after`.
        pub fn list_page(
            conn: &mut $crate::AnyConnection,
            tenant_id: &str,
            after: Option<&$crate::repo::page::After>,
            limit: i64,
        ) -> Result<$crate::repo::page::Page<$row>, $crate::DbError> {
            use diesel::prelude::*;
            use $crate::schema::$table::dsl as t;
            let query = t::$table
                .filter(t::tenant_id.eq(tenant_id))
                .filter(t::revoked_at.is_null())
                .into_boxed::<$crate::repo::page::AnyBackend>();
            Ok($crate::repo::page::load_page!(conn, query, t, $row, after, limit))
        }

        #[doc = concat!("The tenant's ", $noun, " `id` (revoked or not).")]
        pub fn find(
            conn: &mut $crate::AnyConnection,
            tenant_id: &str,
            id: &str,
        ) -> Result<Option<$row>, $crate::DbError> {
            use diesel::prelude::*;
            use $crate::schema::$table::dsl as t;
            Ok(t::$table
                .filter(t::tenant_id.eq(tenant_id))
                .filter(t::id.eq(id))
                .select(<$row>::as_select())
                .first(conn)
                .optional()?)
        }

        #[doc = concat!("Revokes a ", $noun, " of the tenant. False if there is no such ", $noun, " that is not revoked")]
        /// (unknown, another tenant's, or already revoked).
        pub fn revoke(
            conn: &mut $crate::AnyConnection,
            tenant_id: &str,
            id: &str,
            now: i64,
        ) -> Result<bool, $crate::DbError> {
            use diesel::prelude::*;
            use $crate::schema::$table::dsl as t;
            let n = diesel::update(
                t::$table
                    .filter(t::tenant_id.eq(tenant_id))
                    .filter(t::id.eq(id))
                    .filter(t::revoked_at.is_null()),
            )
            .set(t::revoked_at.eq(now))
            .execute(conn)?;
            Ok(n == 1)
        }
    };
}
pub(crate) use revocable_rows;
