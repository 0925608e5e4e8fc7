//! [`PostgresDurability::Guard`](super::PostgresDurability::Guard): grants committed without
//! waiting for the disk, and the crash guard that makes that safe.
//!
//! A commit that was answered but not yet flushed is lost when the server crashes (or is
//! shut down with `-m immediate`, or a replica is promoted, or a backup restored). A lost
//! grant leaves its holder believing in a lease the table no longer shows. The guard:
//!
//! - `<table>_guard` is an UNLOGGED table with one row. PostgreSQL empties unlogged tables
//!   on every start that follows a crash, has none of their rows on a replica, and keeps
//!   them through a clean restart, which flushes every commit first: the row is missing
//!   exactly when commits may have been lost. (The postmaster's start time would miss a
//!   backend's crash, after which the postmaster reinitialises without restarting.)
//! - Every grant reads the row in its own statement and grants only if the row is there
//!   and its `grant_after` has passed; the statement answers which.
//! - A store that finds the row missing writes it back with `grant_after` = the database's
//!   clock plus the longest TTL any grant may have had, plus its drift margin: every lease
//!   that could have been lost has run out by then. Until that time every grant is refused
//!   with [`LockError::Recovering`] (transient).
//! - The longest TTL is kept in `<table>_longest`, a logged table, raised with a flushed
//!   commit before the first grant or renewal of a longer lease (so once per process and
//!   TTL, not per grant); each store also remembers the longest it has recorded, for a
//!   replica that had not received the raise.
//! - Renewals commit without a flush too (a lost renewal is a lease the wait covers);
//!   releases already did. Fences are floored by the database clock, so the fences drawn
//!   after the wait are above every fence drawn before the crash.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::error::LockError;
use crate::lease::default_drift_margin;

use super::client::{Param, column};
use super::connection::{identifier, pg_error};
use super::{BACKEND, PostgresConfig, PostgresLockStore};

/// The guard's statements and what this store knows.
pub(super) struct Guard {
    /// The longest TTL (ms) this store knows to be on disk in `<table>_longest`.
    longest: AtomicI64,
    raise_longest: String,
    read_longest: String,
    recover: String,
}

/// The marker table and the longest-TTL table of the store's table, schema-qualified.
pub(super) fn tables(config: &PostgresConfig) -> Result<(String, String), LockError> {
    let schema = identifier(&config.schema, "schema")?;
    let guard = identifier(&format!("{}_guard", config.table), "table")?;
    let longest = identifier(&format!("{}_longest", config.table), "table")?;
    Ok((format!("{schema}.{guard}"), format!("{schema}.{longest}")))
}

/// What a guarded grant's statement said of the marker.
pub(super) enum Marker {
    /// Present and past its `grant_after`: the statement could grant.
    Open,
    /// Missing: commits may have been lost since it was written.
    Missing,
    /// Present, and no grant before this time.
    Closed(SystemTime),
}

impl Guard {
    pub(super) fn new(guard: &str, longest: &str) -> Self {
        Self {
            longest: AtomicI64::new(0),
            raise_longest: format!(
                "INSERT INTO {longest} AS l (id, longest_ms) VALUES (true, $1)
                 ON CONFLICT (id) DO UPDATE SET longest_ms = GREATEST(l.longest_ms, EXCLUDED.longest_ms)
                 RETURNING longest_ms, set_config('synchronous_commit', 'on', true)"
            ),
            read_longest: format!("SELECT coalesce(max(longest_ms), 0) FROM {longest}"),
            recover: format!(
                "INSERT INTO {guard} AS g (id, grant_after)
                 VALUES (true, clock_timestamp() + $1::bigint * interval '1 millisecond')
                 ON CONFLICT (id) DO UPDATE SET grant_after = GREATEST(g.grant_after, EXCLUDED.grant_after)
                 RETURNING grant_after"
            ),
        }
    }

    /// The guarded form of a grant: `upsert` takes the row's source (a `SELECT` that
    /// yields the row only while the marker is open) and answers the lease's fence and
    /// times; the statement adds the marker's state (columns 3 and 4) and commits without
    /// a flush. `extra` is one more output expression (a notification) or empty.
    pub(super) fn grant(guard: &str, upsert: &str, extra: &str) -> String {
        format!(
            "WITH g AS MATERIALIZED (SELECT grant_after, grant_after > clock_timestamp() AS closed FROM {guard}),
                  taken AS ({upsert})
             SELECT taken.fence, taken.acquired_at, taken.expires_at,
                    EXISTS (SELECT 1 FROM g),
                    (SELECT grant_after FROM g WHERE closed LIMIT 1),
                    set_config('synchronous_commit', 'off', true){extra}
             FROM (SELECT 1) AS one LEFT JOIN taken ON true"
        )
    }

    /// Reads the marker's state from a guarded grant's row.
    pub(super) fn marker(row: &Row, what: &'static str) -> Result<Marker, LockError> {
        if !column::<bool>(row, 3, what)? {
            return Ok(Marker::Missing);
        }
        Ok(match column::<Option<SystemTime>>(row, 4, what)? {
            Some(until) => Marker::Closed(until),
            None => Marker::Open,
        })
    }
}

impl PostgresLockStore {
    /// Runs one of the guard's statements (`sql` on a retry too) by `deadline` and returns
    /// the `i64` in its first row's first column, `None` without a row.
    async fn guard_number(
        &self,
        what: &'static str,
        sql: &str,
        params: &[Param<'_>],
        deadline: tokio::time::Instant,
    ) -> Result<Option<i64>, LockError> {
        let rows = self
            .rows_until(what, sql, sql, params, deadline, None)
            .await?;
        rows.first()
            .map(|row| column::<i64>(row, 0, what))
            .transpose()
    }

    /// Before a grant or renewal of `ttl_ms` in guard mode: makes sure `<table>_longest`
    /// holds at least that, on disk, so that a wait after a crash covers this lease.
    pub(super) async fn record_longest(
        &self,
        ttl_ms: i64,
        deadline: tokio::time::Instant,
    ) -> Result<(), LockError> {
        let Some(guard) = &self.guard else {
            return Ok(());
        };
        if ttl_ms <= guard.longest.load(Ordering::Acquire) {
            return Ok(());
        }
        let recorded = self
            .guard_number(
                "record the longest lease",
                &guard.raise_longest,
                &[(&ttl_ms, Type::INT8)],
                deadline,
            )
            .await?
            .unwrap_or(ttl_ms);
        guard.longest.fetch_max(recorded, Ordering::AcqRel);
        Ok(())
    }

    /// The marker was missing: commits may have been lost. Writes it back, closed until
    /// every lease that could have been lost has run out.
    pub(super) async fn recover(&self, deadline: tokio::time::Instant) -> Result<(), LockError> {
        let Some(guard) = &self.guard else {
            return Ok(());
        };
        let on_disk = self
            .guard_number("read the longest lease", &guard.read_longest, &[], deadline)
            .await?
            .unwrap_or(0);
        let longest = Duration::from_millis(
            u64::try_from(on_disk.max(guard.longest.load(Ordering::Acquire))).unwrap_or(0),
        );
        let wait = super::lock_store::millis(longest + default_drift_margin(longest));
        let rows = self
            .rows_until(
                "close the lock table after a crash",
                &guard.recover,
                &guard.recover,
                &[(&wait, Type::INT8)],
                deadline,
                None,
            )
            .await?;
        let until = match rows.first() {
            Some(row) => column::<SystemTime>(row, 0, "close the lock table after a crash")?,
            None => SystemTime::now() + longest,
        };
        tracing::warn!(
            table = %self.config.table,
            longest = ?longest,
            until = %crate::util::clock::format_time(until),
            "the PostgreSQL server may have lost commits that were not yet on disk (a crash, an immediate shutdown, a promoted replica or a restored backup): no lock is granted until every lease that could have been lost has run out"
        );
        Ok(())
    }

    /// The guard's part of the migration, inside its transaction: in guard mode, makes the
    /// two tables (a new marker is open: nothing was granted against it yet) and reads the
    /// longest TTL; in flush mode, refuses a table that guard-mode stores use.
    pub(super) async fn migrate_guard(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), LockError> {
        let (guard_table, longest_table) = tables(&self.config)?;
        let existed = tx
            .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&guard_table])
            .await
            .map_err(pg_error("look for the crash guard's table"))?;
        let existed: bool = column(&existed, 0, "look for the crash guard's table")?;
        let Some(guard) = &self.guard else {
            if existed {
                return Err(LockError::Unsafe {
                    backend: BACKEND,
                    reason: format!(
                        "the lock table {}.{} is used with durability=guard (its {guard_table} exists): a store that flushes would not wait out a crash with them; connect with durability=guard, or drop {guard_table} once no process uses guard mode",
                        self.config.schema, self.config.table
                    ),
                });
            }
            return Ok(());
        };
        tx.batch_execute(&format!(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {guard_table} (
                 id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
                 grant_after TIMESTAMPTZ NOT NULL
             );
             CREATE TABLE IF NOT EXISTS {longest_table} (
                 id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
                 longest_ms BIGINT NOT NULL
             );"
        ))
        .await
        .map_err(pg_error("create the crash guard's tables"))?;
        if !existed {
            tx.execute(
                &format!(
                    "INSERT INTO {guard_table} (id, grant_after) VALUES (true, clock_timestamp())
                     ON CONFLICT (id) DO NOTHING"
                ),
                &[],
            )
            .await
            .map_err(pg_error("open the crash guard"))?;
        }
        let row = tx
            .query_one(&guard.read_longest, &[])
            .await
            .map_err(pg_error("read the longest lease"))?;
        let longest: i64 = column(&row, 0, "read the longest lease")?;
        guard.longest.fetch_max(longest, Ordering::AcqRel);
        Ok(())
    }
}
