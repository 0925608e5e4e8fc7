//! [`PostgresSessionStore`]: sessions in PostgreSQL, shared by every machine of a service;
//! a session row, a row per message and a row per scoped fence, each write one statement
//! or one call of a stored function that locks the session's row.

use std::time::Duration;

use conc_lock_store::PostgresPoolMode;
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql, Type};

use super::{
    Appended, SessionStore, check_id, decode_with_messages, encode_head, encode_message,
    message_rows, stale,
};
use crate::data::{Message, SessionData};
use crate::error::SessionError;

const BACKEND: &str = "postgres";

fn store_error(e: impl std::fmt::Display) -> SessionError {
    super::store_error(BACKEND, e)
}

/// A statement's parameter with its type (what an unnamed statement needs).
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Column `index` of `row`, or an error naming the statement: a row of the wrong shape is
/// an unexpected answer, never a panic.
fn column<'a, T: FromSql<'a>>(row: &'a Row, index: usize, what: &str) -> Result<T, SessionError> {
    row.try_get(index).map_err(|e| {
        store_error(format!(
            "{what}: column {index} of the server's answer could not be read ({e}); behind a transaction pooler such as PgBouncer, add `pool_mode=transaction` to the URL"
        ))
    })
}

/// Sessions in PostgreSQL (a pooled client, a timeout on every call), shared by every
/// machine of a service.
#[derive(Debug, Clone)]
pub struct PostgresSessionStore {
    pool: Pool,
    table: String,
    /// `"schema".conc_session_messages`: one row per message.
    messages: String,
    /// `"schema".`, for the store's functions.
    schema: String,
    op_timeout: Duration,
    /// Straight (or a session pooler): cached named statements; through a transaction
    /// pooler: unnamed, typed statements.
    pool_mode: PostgresPoolMode,
}

/// A fence as PostgreSQL stores it.
fn fence_value(fence: u64) -> Result<i64, SessionError> {
    i64::try_from(fence).map_err(|_| {
        store_error(format!(
            "fence {fence} is larger than a stored fence can be"
        ))
    })
}

impl PostgresSessionStore {
    async fn save_checked(
        &self,
        session: &SessionData,
        fence: Option<u64>,
    ) -> Result<SessionData, SessionError> {
        let saved = SessionData {
            version: session.version + 1,
            fence: session.fence.max(fence.unwrap_or(0)),
            ..session.clone()
        };
        let text = encode_head(&saved)?;
        let version = session.version as i64;
        let (ids, bodies) = message_rows(&saved.messages)?;
        let fence_arg = fence.map(fence_value).transpose()?;
        let sql = format!(
            "SELECT {}conc_session_save($1, $2, $3, $4, $5, $6)",
            self.schema
        );
        let changed = self
            .rows(
                &sql,
                &[
                    (&session.id, Type::TEXT),
                    (&version, Type::INT8),
                    (&text, Type::TEXT),
                    (&fence_arg, Type::INT8),
                    (&ids, Type::TEXT_ARRAY),
                    (&bodies, Type::TEXT_ARRAY),
                ],
            )
            .await?
            .first()
            .map(|row| column::<i32>(row, 0, "save"))
            .transpose()?
            .unwrap_or(0);
        if changed == 1 {
            return Ok(saved);
        }
        super::conflict_or_missing(self, session, fence).await
    }

    /// Connects to `url` and creates `schema.conc_sessions` if needed. `schema` must be
    /// lowercase letters, digits and `_`. Behind a pooler in transaction mode (PgBouncer),
    /// add `pool_mode=transaction` to the URL: every statement is then sent unnamed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the table created; nothing else.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, SessionError> {
        let valid = !schema.is_empty()
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !schema.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(store_error(format!("invalid schema name `{schema}`")));
        }
        // conc's own options (`pool_mode`) leave the URL the driver reads.
        let parsed = conc_lock_store::parse_url(url).map_err(store_error)?;
        let pool_mode = match parsed.option("pool_mode") {
            Some(mode) => PostgresPoolMode::parse(mode).map_err(store_error)?,
            None => PostgresPoolMode::Session,
        };
        // The lock store's pool builder: TLS from the URL (`sslmode`, `sslrootcert`),
        // statement and connect timeouts, errors that name their cause.
        let config = conc_lock_store::PostgresConfig::default()
            .with_application_name("conc-session")
            .with_pool_mode(pool_mode);
        let pool = conc_lock_store::postgres_pool(&parsed.target, &config).map_err(store_error)?;
        Self::from_pool_with_mode(pool, schema, pool_mode).await
    }

    /// A store over a pool the service already has (see
    /// [`conc_lock_store::postgres_pool`] for one with TLS from a URL); creates
    /// `schema.conc_sessions` if needed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the table created; nothing else.
    pub async fn from_pool(pool: Pool, schema: &str) -> Result<Self, SessionError> {
        Self::from_pool_with_mode(pool, schema, PostgresPoolMode::Session).await
    }

    /// As [`from_pool`](Self::from_pool), for a pool that reaches the server as
    /// `pool_mode` says (through a transaction pooler: every statement unnamed).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the table created; nothing else.
    pub async fn from_pool_with_mode(
        pool: Pool,
        schema: &str,
        pool_mode: PostgresPoolMode,
    ) -> Result<Self, SessionError> {
        let valid = !schema.is_empty()
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !schema.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(store_error(format!("invalid schema name `{schema}`")));
        }
        let store = Self {
            pool,
            table: format!("\"{schema}\".conc_sessions"),
            messages: format!("\"{schema}\".conc_session_messages"),
            schema: format!("\"{schema}\"."),
            op_timeout: Duration::from_secs(5),
            pool_mode,
        };
        let client = store.client().await?;
        let (t, m, s) = (&store.table, &store.messages, &store.schema);
        let fences = format!("{s}conc_session_fences");
        // Messages are rows of their own, so an append costs the same at any length. The
        // two functions run their statements in order, after locking the session's row:
        // each sees what committed before it, so concurrent writers serialize per session.
        let create = format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, version BIGINT NOT NULL, data TEXT NOT NULL);
                 ALTER TABLE {t} ADD COLUMN IF NOT EXISTS fence BIGINT NOT NULL DEFAULT 0;
                 ALTER TABLE {t} ADD COLUMN IF NOT EXISTS next_seq BIGINT NOT NULL DEFAULT 0;
                 CREATE TABLE IF NOT EXISTS {m} (
                     session_id TEXT NOT NULL, seq BIGINT NOT NULL, message_id TEXT NOT NULL, body TEXT NOT NULL,
                     PRIMARY KEY (session_id, seq), UNIQUE (session_id, message_id));
                 CREATE TABLE IF NOT EXISTS {fences} (
                     session_id TEXT NOT NULL, scope TEXT NOT NULL, fence BIGINT NOT NULL,
                     PRIMARY KEY (session_id, scope));
                 CREATE OR REPLACE FUNCTION {s}conc_session_advance_scope(p_id text, p_scope text, p_fence bigint)
                 RETURNS TABLE (status int, recorded bigint) LANGUAGE plpgsql AS $f$
                 DECLARE sf bigint;
                 BEGIN
                   PERFORM 1 FROM {t} x WHERE x.id = p_id FOR UPDATE;
                   IF NOT FOUND THEN RETURN QUERY SELECT 0, 0::bigint; RETURN; END IF;
                   SELECT z.fence INTO sf FROM {fences} z WHERE z.session_id = p_id AND z.scope = p_scope;
                   IF FOUND AND sf > p_fence THEN RETURN QUERY SELECT 1, sf; RETURN; END IF;
                   INSERT INTO {fences} (session_id, scope, fence) VALUES (p_id, p_scope, p_fence)
                     ON CONFLICT (session_id, scope) DO UPDATE SET fence = EXCLUDED.fence;
                   RETURN QUERY SELECT 2, p_fence;
                 END $f$;
                 CREATE OR REPLACE FUNCTION {s}conc_session_append(p_id text, p_scope text, p_message_id text, p_body text, p_fence bigint)
                 RETURNS TABLE (status int, out_version bigint, out_fence bigint) LANGUAGE plpgsql AS $f$
                 DECLARE v bigint; f bigint; n bigint; d text; sf bigint;
                 BEGIN
                   SELECT x.version, x.fence, x.next_seq, x.data INTO v, f, n, d FROM {t} x WHERE x.id = p_id FOR UPDATE;
                   IF NOT FOUND THEN RETURN QUERY SELECT 0, 0::bigint, 0::bigint; RETURN; END IF;
                   IF p_scope = '' THEN
                     IF p_fence IS NOT NULL AND f > p_fence THEN RETURN QUERY SELECT 1, v, f; RETURN; END IF;
                   ELSE
                     SELECT z.fence INTO sf FROM {fences} z WHERE z.session_id = p_id AND z.scope = p_scope;
                     IF FOUND AND sf > p_fence THEN RETURN QUERY SELECT 1, v, sf; RETURN; END IF;
                     INSERT INTO {fences} (session_id, scope, fence) VALUES (p_id, p_scope, p_fence)
                       ON CONFLICT (session_id, scope) DO UPDATE SET fence = EXCLUDED.fence;
                   END IF;
                   IF EXISTS (SELECT 1 FROM {m} y WHERE y.session_id = p_id AND y.message_id = p_message_id)
                      OR COALESCE((d::jsonb -> 'messages') @> jsonb_build_array(jsonb_build_object('id', p_message_id)), false) THEN
                     RETURN QUERY SELECT 2, v, f; RETURN;
                   END IF;
                   INSERT INTO {m} (session_id, seq, message_id, body) VALUES (p_id, n, p_message_id, p_body);
                   UPDATE {t} x SET version = x.version + 1, next_seq = x.next_seq + 1,
                     fence = CASE WHEN p_scope = '' THEN GREATEST(x.fence, COALESCE(p_fence, 0)) ELSE x.fence END
                     WHERE x.id = p_id RETURNING x.version, x.fence INTO v, f;
                   RETURN QUERY SELECT 3, v, f;
                 END $f$;
                 CREATE OR REPLACE FUNCTION {s}conc_session_save(p_id text, p_version bigint, p_data text, p_fence bigint, p_ids text[], p_bodies text[])
                 RETURNS int LANGUAGE plpgsql AS $f$
                 DECLARE v bigint; f bigint;
                 BEGIN
                   SELECT x.version, x.fence INTO v, f FROM {t} x WHERE x.id = p_id FOR UPDATE;
                   IF NOT FOUND OR v <> p_version OR (p_fence IS NOT NULL AND f > p_fence) THEN RETURN 0; END IF;
                   DELETE FROM {m} WHERE session_id = p_id;
                   INSERT INTO {m} (session_id, seq, message_id, body)
                     SELECT p_id, u.o - 1, u.mid, u.body FROM unnest(p_ids, p_bodies) WITH ORDINALITY AS u(mid, body, o)
                     ON CONFLICT DO NOTHING;
                   UPDATE {t} x SET version = x.version + 1, data = p_data, next_seq = cardinality(p_ids),
                     fence = GREATEST(x.fence, COALESCE(p_fence, 0)) WHERE x.id = p_id;
                   RETURN 1;
                 END $f$;"
        );
        // One transaction, under a transaction-level advisory lock (concurrent first
        // connections must not race on CREATE … IF NOT EXISTS): one server connection from
        // BEGIN to COMMIT, even through a transaction pooler.
        let migration = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('conc_session_migrate')); {create}; COMMIT;"
        );
        let outcome = tokio::time::timeout(store.op_timeout * 2, client.batch_execute(&migration))
            .await
            .map_err(|_| store_error("creating the session table timed out"))
            .and_then(|done| done.map_err(|e| super::driver_error(BACKEND, e)));
        if outcome.is_err() {
            // A transaction left open by the failure must not go back to the pool.
            let _ = deadpool_postgres::Object::take(client);
        }
        outcome?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, SessionError> {
        self.pool
            .get()
            .await
            .map_err(|e| store_error(conc_lock_store::postgres_pool_error(e)))
    }

    /// Runs `sql`, retrying on a fresh connection when the connection was lost (a
    /// `pg_terminate_backend`, a failover), each try within the operation timeout.
    async fn rows(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, SessionError> {
        let mut tries = 0;
        loop {
            tries += 1;
            // The connection in use: a try that is lost or runs past the timeout throws it
            // away rather than hand it back to the pool with an answer still to come.
            let mut in_use = None;
            let attempt = async {
                let client = &*in_use.insert(self.client().await?);
                let outcome = match self.pool_mode {
                    PostgresPoolMode::Session => {
                        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                        let values: Vec<&(dyn ToSql + Sync)> =
                            params.iter().map(|(v, _)| *v).collect();
                        match client.prepare_typed_cached(sql, &types).await {
                            Ok(statement) => client.query(&statement, &values).await,
                            Err(e) => Err(e),
                        }
                    }
                    // Unnamed and typed, in one round trip: nothing prepared outlives it.
                    _ => client.query_typed(sql, params).await,
                };
                match outcome {
                    Ok(rows) => Ok(Ok(rows)),
                    Err(e) if conc_lock_store::is_connection_lost(&e) => Ok(Err(e)),
                    Err(e) => Err(match conc_lock_store::postgres_pooler_symptom(&e) {
                        Some(advice) => store_error(advice),
                        None => super::driver_error(BACKEND, e),
                    }),
                }
            };
            let outcome = tokio::time::timeout(self.op_timeout, attempt).await;
            if !matches!(outcome, Ok(Ok(Ok(_))) | Ok(Err(_)))
                && let Some(client) = in_use.take()
            {
                let _ = deadpool_postgres::Object::take(client);
            }
            match outcome {
                Err(_) => {
                    return Err(store_error(format!(
                        "the operation took longer than {:?}",
                        self.op_timeout
                    )));
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Ok(rows))) => return Ok(rows),
                Ok(Ok(Err(e))) if tries < 3 => {
                    tracing::debug!(error = %e, tries, "postgres session store lost its connection; retrying on a fresh one");
                }
                Ok(Ok(Err(e))) => {
                    return Err(store_error(format!("the connection was lost: {e}")));
                }
            }
        }
    }
}

impl PostgresSessionStore {
    /// An append whose fence is checked against the session's own (`scope` empty) or
    /// a scope's (recorded there, not in the session's own), in one function call.
    async fn append_checked(
        &self,
        id: &str,
        scope: &str,
        message: &Message,
        fence: Option<u64>,
    ) -> Result<Appended, SessionError> {
        let body = encode_message(message)?;
        let fence_arg = fence.map(fence_value).transpose()?;
        let sql = format!(
            "SELECT status, out_version, out_fence FROM {}conc_session_append($1, $2, $3, $4, $5)",
            self.schema
        );
        let rows = self
            .rows(
                &sql,
                &[
                    (&id, Type::TEXT),
                    (&scope, Type::TEXT),
                    (&message.id, Type::TEXT),
                    (&body, Type::TEXT),
                    (&fence_arg, Type::INT8),
                ],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| store_error("the append function returned no row"))?;
        let (status, version, stored_fence) = (
            column::<i32>(row, 0, "append")?,
            column::<i64>(row, 1, "append")? as u64,
            column::<i64>(row, 2, "append")? as u64,
        );
        match status {
            0 => Err(SessionError::NotFound(id.to_owned())),
            1 => Err(stale(id, fence.unwrap_or(0), stored_fence)),
            added => Ok(Appended {
                added: added == 3,
                version,
                fence: stored_fence,
            }),
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for PostgresSessionStore {
    async fn create(&self, session: &SessionData) -> Result<SessionData, SessionError> {
        check_id(&session.id)?;
        let stored = SessionData {
            version: 0,
            ..session.clone()
        };
        let text = encode_head(&stored)?;
        let (ids, bodies) = message_rows(&stored.messages)?;
        let sql = format!(
            "WITH s AS (INSERT INTO {} (id, version, data, next_seq) VALUES ($1, 0, $2, cardinality($3::text[]))
                     ON CONFLICT (id) DO NOTHING RETURNING id),
                 m AS (INSERT INTO {} (session_id, seq, message_id, body)
                     SELECT s.id, u.o - 1, u.mid, u.body FROM s, unnest($3::text[], $4::text[]) WITH ORDINALITY AS u(mid, body, o)
                     ON CONFLICT DO NOTHING)
                 SELECT 1 FROM s",
            self.table, self.messages
        );
        let inserted = self
            .rows(
                &sql,
                &[
                    (&stored.id, Type::TEXT),
                    (&text, Type::TEXT),
                    (&ids, Type::TEXT_ARRAY),
                    (&bodies, Type::TEXT_ARRAY),
                ],
            )
            .await?
            .len();
        if inserted == 0 {
            return Err(SessionError::AlreadyExists(stored.id));
        }
        Ok(stored)
    }

    async fn load(&self, id: &str) -> Result<Option<SessionData>, SessionError> {
        // One statement: the row and its messages from one snapshot.
        let sql = format!(
            "SELECT s.version, s.data, s.fence,
                        ARRAY(SELECT m.body FROM {} m WHERE m.session_id = s.id ORDER BY m.seq)
                 FROM {} s WHERE s.id = $1",
            self.messages, self.table
        );
        let rows = self.rows(&sql, &[(&id, Type::TEXT)]).await?;
        rows.first()
            .map(|r| {
                decode_with_messages(
                    BACKEND,
                    column::<&str>(r, 1, "load")?,
                    column::<i64>(r, 0, "load")? as u64,
                    column::<i64>(r, 2, "load")? as u64,
                    &column::<Vec<String>>(r, 3, "load")?,
                )
            })
            .transpose()
    }

    async fn append(
        &self,
        id: &str,
        message: &Message,
        fence: Option<u64>,
    ) -> Result<Appended, SessionError> {
        self.append_checked(id, "", message, fence).await
    }

    async fn advance_scoped_fence(
        &self,
        id: &str,
        scope: &str,
        fence: u64,
    ) -> Result<u64, SessionError> {
        if scope.is_empty() {
            return self.advance_fence(id, fence).await;
        }
        let value = fence_value(fence)?;
        let sql = format!(
            "SELECT status, recorded FROM {}conc_session_advance_scope($1, $2, $3)",
            self.schema
        );
        let rows = self
            .rows(
                &sql,
                &[
                    (&id, Type::TEXT),
                    (&scope, Type::TEXT),
                    (&value, Type::INT8),
                ],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| store_error("the fence function returned no row"))?;
        match column::<i32>(row, 0, "advance a scoped fence")? {
            0 => Err(SessionError::NotFound(id.to_owned())),
            1 => Err(stale(
                id,
                fence,
                column::<i64>(row, 1, "advance a scoped fence")? as u64,
            )),
            _ => Ok(fence),
        }
    }

    async fn append_scoped(
        &self,
        id: &str,
        scope: &str,
        message: &Message,
        fence: u64,
    ) -> Result<Appended, SessionError> {
        self.append_checked(id, scope, message, Some(fence)).await
    }

    async fn save(&self, session: &SessionData) -> Result<SessionData, SessionError> {
        self.save_checked(session, None).await
    }

    async fn save_fenced(
        &self,
        session: &SessionData,
        fence: u64,
    ) -> Result<SessionData, SessionError> {
        self.save_checked(session, Some(fence)).await
    }

    async fn advance_fence(&self, id: &str, fence: u64) -> Result<u64, SessionError> {
        let value = fence_value(fence)?;
        let sql = format!(
            "UPDATE {} SET fence = $2 WHERE id = $1 AND fence <= $2 RETURNING 1",
            self.table
        );
        let changed = self
            .rows(&sql, &[(&id, Type::TEXT), (&value, Type::INT8)])
            .await?
            .len();
        if changed == 1 {
            return Ok(fence);
        }
        Err(super::missing_or_stale(self, id, fence).await)
    }

    async fn list(&self, limit: usize) -> Result<Vec<String>, SessionError> {
        let sql = format!("SELECT id FROM {} ORDER BY id LIMIT $1", self.table);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.rows(&sql, &[(&limit, Type::INT8)]).await?;
        rows.iter().map(|r| column(r, 0, "list")).collect()
    }
}
