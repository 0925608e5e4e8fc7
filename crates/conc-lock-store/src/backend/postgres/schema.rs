//! Creating and upgrading the lease table: made on connect under an advisory transaction
//! lock; tables of earlier versions are converted in the same transaction.

use crate::backend::metadata::{decode_metadata, encode_metadata};
use crate::error::LockError;

use super::client::column;
use super::connection::{identifier, pg_error};
use super::{FILLFACTOR, PostgresLockStore};

impl PostgresLockStore {
    pub(super) async fn migrate(&self, schema: &str, table: &str) -> Result<(), LockError> {
        // Earlier versions indexed `expires_at`, for `cleanup_expired`. Every acquire and
        // release changes it, so with the index no update could be made in place (a HOT
        // update): each wrote a new entry in both indexes, and the key's primary-key entries
        // piled up between vacuums. Without it, the table's only index is the key's, which
        // no update changes; the cleanup walks the table in key batches instead.
        let old_index_name = format!("{}_expires_at", self.config.table);
        let old_index = identifier(&old_index_name, "index")?;
        let mut client = self.client().await?;
        let work = async {
            let tx = client
                .transaction()
                .await
                .map_err(pg_error("begin migration"))?;
            // Concurrent first connections must not race on CREATE … IF NOT EXISTS.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('conc_lock_store_migrate'))",
                &[],
            )
            .await
            .map_err(pg_error("migration lock"))?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {table} (
                     key TEXT PRIMARY KEY,
                     owner TEXT NOT NULL,
                     token TEXT NOT NULL,
                     fence BIGINT NOT NULL,
                     acquired_at TIMESTAMPTZ NOT NULL,
                     expires_at TIMESTAMPTZ NOT NULL
                 ) WITH (fillfactor = {FILLFACTOR});
                 ALTER TABLE {table} ADD COLUMN IF NOT EXISTS metadata JSONB NOT NULL DEFAULT '{{}}';
                 ALTER TABLE {table} ADD COLUMN IF NOT EXISTS waiting_until TIMESTAMPTZ;"
            ))
            .await
            .map_err(pg_error("create the lock schema"))?;
            let had_index = tx
                .query_opt(
                    "SELECT 1 FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
                    &[&self.config.schema, &old_index_name],
                )
                .await
                .map_err(pg_error("look for the old expiry index"))?
                .is_some();
            if had_index {
                tx.batch_execute(&format!(
                    "DROP INDEX IF EXISTS {schema}.{old_index};
                     ALTER TABLE {table} SET (fillfactor = {FILLFACTOR});"
                ))
                .await
                .map_err(pg_error("drop the old expiry index"))?;
            }
            metadata_to_jsonb(&tx, table).await?;
            self.migrate_guard(&tx).await?;
            tx.commit().await.map_err(pg_error("commit migration"))
        };
        tokio::time::timeout(self.config.op_timeout * 2, work)
            .await
            .map_err(|_| self.timed_out("migration"))?
    }
}

/// Tables made by earlier versions keep metadata as TEXT (JSON, or `name=value` lines before
/// that): rewrite every row's text as a JSON object (nothing is dropped: text that cannot
/// be read is kept whole under `_unreadable`), then turn the column into JSONB, so that it
/// can be queried (`metadata->>'user_id'`). Runs inside the migration's transaction, under
/// its advisory lock: every row or none. Processes of an earlier version cannot write the
/// JSONB column; upgrade them all.
async fn metadata_to_jsonb(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
) -> Result<(), LockError> {
    let row = tx
        .query_one(
            &format!(
                "SELECT atttypid::regtype::text FROM pg_attribute
                 WHERE attrelid = '{table}'::regclass AND attname = 'metadata'"
            ),
            &[],
        )
        .await
        .map_err(pg_error("read the metadata column's type"))?;
    let column_type: String = column(&row, 0, "read the metadata column's type")?;
    if column_type == "jsonb" {
        return Ok(());
    }
    let rows = tx
        .query(
            &format!("SELECT key, metadata::text FROM {table} WHERE metadata::text <> ''"),
            &[],
        )
        .await
        .map_err(pg_error("read the metadata to convert"))?;
    let update = format!("UPDATE {table} SET metadata = $2 WHERE key = $1");
    let mut converted = 0u64;
    for row in &rows {
        let (key, text): (&str, &str) = (
            column(row, 0, "read the metadata to convert")?,
            column(row, 1, "read the metadata to convert")?,
        );
        let json = encode_metadata(&decode_metadata(text));
        if json != text {
            tx.execute(&update, &[&key, &json])
                .await
                .map_err(pg_error("convert metadata to JSON"))?;
            converted += 1;
        }
    }
    tx.batch_execute(&format!(
        "ALTER TABLE {table} ALTER COLUMN metadata DROP DEFAULT;
         ALTER TABLE {table} ALTER COLUMN metadata TYPE JSONB
             USING (CASE WHEN metadata = '' THEN '{{}}' ELSE metadata END)::jsonb;
         ALTER TABLE {table} ALTER COLUMN metadata SET DEFAULT '{{}}'"
    ))
    .await
    .map_err(pg_error("turn the metadata column into JSONB"))?;
    tracing::info!(
        table,
        rows = rows.len(),
        converted,
        "lock metadata column converted from TEXT to JSONB"
    );
    Ok(())
}
