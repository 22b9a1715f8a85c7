//! Long-running operations: the reindex that indexes newly added extended query tags in the
//! instances stored before them.
//!
//! An operation is a row: its cursor (the last instance id done, instances being walked in id
//! order), its counts, and a lease. Whichever process holds the lease does the next batch, in
//! one write transaction that also advances the cursor and renews the lease, and only if it
//! still holds it: a batch is done once or not at all, and a process that dies (or restarts)
//! leaves the cursor where its last commit put it, for the next holder once the lease expires.
//!
//! Stores index the tag from the moment it is added (within the registry cache's lifetime), so
//! once [`COMPLETION_GRACE`] has passed since the operation began (a store that read the
//! registry just before the tag existed has committed by then) the operation fixes its last
//! instance, the service's highest instance id at that moment, and the walk ends there.
//! Everything stored later was indexed by its store: a reindex under a sustained load ends
//! instead of chasing the newest instance.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hds_db::Backend;
use hds_dicom::QueryLevel;
use hds_dicom::extended::extract_values;
use serde_json::{Map, Value};

use crate::extended::{ExtendedQueryTag, now_us, random_hex, tag_from_row};
use crate::index::{
    ATTRIBUTES_COLUMN, INSTANCE_TABLE, METADATA_COLUMN, SERIES_TABLE, STUDY_TABLE, from_json,
    to_json,
};
use crate::sql::{Argument, Sql, column};
use crate::tokens::value_tokens;
use crate::{Index, IndexError, RowBinding};

/// Instances per batch (one write transaction each).
const BATCH: i64 = 50;

/// How long a lease lasts without renewal; a batch renews it.
pub(crate) const LEASE: Duration = Duration::from_secs(10);

/// How long after an operation began its walk may end (see the module note).
const COMPLETION_GRACE: Duration = Duration::from_secs(3);

/// Whether an operation created at `created_us` is past its completion grace.
fn grace_passed(created_us: i64) -> bool {
    now_us() - created_us >= COMPLETION_GRACE.as_micros() as i64
}

/// An operation's status, as Azure names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationStatus {
    /// Recorded, no batch done yet.
    NotStarted,
    /// Some batches done.
    Running,
    /// Done.
    Succeeded,
    /// Ended without finishing.
    Failed,
}

impl OperationStatus {
    /// Azure's name.
    pub fn name(self) -> &'static str {
        match self {
            OperationStatus::NotStarted => "notStarted",
            OperationStatus::Running => "running",
            OperationStatus::Succeeded => "succeeded",
            OperationStatus::Failed => "failed",
        }
    }

    fn parse(name: &str) -> Result<OperationStatus, IndexError> {
        match name {
            "notStarted" => Ok(OperationStatus::NotStarted),
            "running" => Ok(OperationStatus::Running),
            "succeeded" => Ok(OperationStatus::Succeeded),
            "failed" => Ok(OperationStatus::Failed),
            _ => Err(IndexError::Corrupt("unknown operation status".into())),
        }
    }
}

/// A long-running operation of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Its id (32 hex digits).
    pub id: String,
    /// Its type (`reindex`).
    pub kind: String,
    /// Its status.
    pub status: OperationStatus,
    /// When it was created (microseconds since 1970, UTC).
    pub created_us: i64,
    /// When it last changed.
    pub updated_us: i64,
    /// 0 to 100.
    pub percent_complete: u8,
    /// The tag paths it works on.
    pub resources: Vec<String>,
    /// A bulk update's results so far (`None` for a reindex).
    pub results: Option<crate::UpdateResults>,
}

/// What one step of the worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReindexStep {
    /// Nothing to do.
    Idle,
    /// A batch of instances was indexed.
    Progressed,
    /// An operation waits for its completion grace.
    Waiting,
    /// An operation finished.
    Finished,
}

/// The sealed attributes of a study or series row a batch changes.
struct ParentRow {
    token: Vec<u8>,
    /// The sealed attributes as read.
    sealed: Vec<u8>,
    attributes: Map<String, Value>,
    /// The elements this batch adds: (tag path, element).
    elements: Vec<(String, Value)>,
}

/// Which parent table a row is in.
#[derive(Debug, Clone, Copy)]
enum ParentTable {
    Study,
    Series,
}

impl ParentTable {
    fn sql_table(self) -> &'static str {
        match self {
            ParentTable::Study => "dicom_studies",
            ParentTable::Series => "dicom_series",
        }
    }

    fn binding_table(self) -> &'static str {
        match self {
            ParentTable::Study => STUDY_TABLE,
            ParentTable::Series => SERIES_TABLE,
        }
    }
}

/// A study or series row a batch rewrites: its sealed attributes before and after, and the
/// elements added (to merge again if a store rewrote the row meanwhile).
struct ParentWrite {
    table: ParentTable,
    id: i64,
    token: Vec<u8>,
    before: Vec<u8>,
    after: Vec<u8>,
    elements: Vec<(String, Value)>,
}

impl Index {
    /// The operation `id` of the service, if any.
    pub async fn operation(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Option<Operation>, IndexError> {
        let row = sqlx::query(
            "SELECT id, kind, status, created_us, updated_us, processed, total, resources, \
             sealed_results FROM dicom_operations WHERE service = $1 AND id = $2",
        )
        .bind(service)
        .bind(id)
        .fetch_optional(self.database.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status = OperationStatus::parse(&column::<String>(&row, 2)?)?;
        let processed: i64 = column(&row, 5)?;
        let total: i64 = column(&row, 6)?;
        let kind: String = column(&row, 1)?;
        let percent_complete = match status {
            OperationStatus::Succeeded => 100,
            // An update that ended with errors did every study it could, as Azure reports it.
            OperationStatus::Failed if kind == "update" => 100,
            _ if total <= 0 => 0,
            _ => (processed.saturating_mul(100) / total).clamp(0, 99) as u8,
        };
        let resources: String = column(&row, 7)?;
        let results = if kind == "update" {
            self.operation_results(service, id, column(&row, 8)?)?
        } else {
            None
        };
        Ok(Some(Operation {
            id: column(&row, 0)?,
            kind,
            results,
            status,
            created_us: column(&row, 3)?,
            updated_us: column(&row, 4)?,
            percent_complete,
            resources: serde_json::from_str(&resources)
                .map_err(|_| IndexError::Corrupt("operation resources".into()))?,
        }))
    }

    /// Starts the task that runs operations on this process: it takes the lease of any
    /// operation that has none (or whose holder stopped renewing it) and works through it,
    /// checking for new ones every `idle_interval` and whenever this process adds tags.
    pub fn spawn_operation_worker(&self, idle_interval: Duration) -> tokio::task::JoinHandle<()> {
        let index = self.clone();
        tokio::spawn(async move {
            // A fresh owner per process: a restarted process waits for its predecessor's lease
            // to expire like any other node.
            let owner = match random_hex() {
                Ok(owner) => owner,
                Err(error) => {
                    tracing::error!(%error, "the operation worker could not start");
                    return;
                }
            };
            loop {
                let pause = match index.operation_step(&owner).await {
                    Ok(ReindexStep::Progressed | ReindexStep::Finished) => None,
                    Ok(ReindexStep::Waiting) => Some(Duration::from_millis(250)),
                    Ok(ReindexStep::Idle) => Some(idle_interval),
                    Err(error) => {
                        tracing::warn!(%error, "an operation step failed; retrying later");
                        Some(idle_interval)
                    }
                };
                match pause {
                    None => tokio::task::yield_now().await,
                    Some(pause) => {
                        let _ = tokio::time::timeout(pause, index.reindex_wakeup.notified()).await;
                    }
                }
            }
        })
    }

    /// One step of the worker `owner`: a batch of the first operation it holds or can take.
    /// Operations whose service's keys are not in memory are left for later.
    pub async fn operation_step(&self, owner: &str) -> Result<ReindexStep, IndexError> {
        let step = self
            .claim_operation(
                "reindex",
                owner,
                |_| true,
                async |id, _| self.reindex_batch(&id, owner).await.map(Some),
            )
            .await?;
        Ok(step.unwrap_or(ReindexStep::Idle))
    }

    /// Takes the lease of the oldest unfinished operation of `kind` that `owner` can take
    /// (free, expired or already its own) and whose service `wanted` accepts, and returns what
    /// `work` makes of it (`work` gets the operation's id and service). An operation `work`
    /// passes over (`None`) or whose service's keys are not in memory is left for later, and
    /// the next one is tried. The one claiming loop of reindex, update and export operations.
    pub(crate) async fn claim_operation<T, Work>(
        &self,
        kind: &str,
        owner: &str,
        wanted: impl Fn(&str) -> bool,
        mut work: impl FnMut(String, String) -> Work,
    ) -> Result<Option<T>, IndexError>
    where
        Work: Future<Output = Result<Option<T>, IndexError>>,
    {
        let candidates = sqlx::query(
            "SELECT id, service FROM dicom_operations WHERE kind = $1 \
             AND status IN ('notStarted', 'running') ORDER BY created_us LIMIT 16",
        )
        .bind(kind)
        .fetch_all(self.database.pool())
        .await?;
        for row in candidates {
            let id: String = column(&row, 0)?;
            let service: String = column(&row, 1)?;
            // A service left out waits without its lease being taken meanwhile.
            if !wanted(&service) || !self.take_lease(&id, owner).await? {
                continue;
            }
            match work(id, service).await {
                Ok(Some(done)) => return Ok(Some(done)),
                Ok(None) | Err(IndexError::KeysUnavailable) => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }

    /// Takes (or renews) the lease of operation `id` for `owner`, if it is free, expired or
    /// already `owner`'s.
    pub(crate) async fn take_lease(&self, id: &str, owner: &str) -> Result<bool, IndexError> {
        let now = now_us();
        let mut transaction = self.database.begin_write().await?;
        let taken = sqlx::query(
            "UPDATE dicom_operations SET lease_owner = $1, lease_until_us = $2, \
             status = 'running', updated_us = $3 WHERE id = $4 \
             AND status IN ('notStarted', 'running') \
             AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until_us < $3)",
        )
        .bind(owner)
        .bind(now + LEASE.as_micros() as i64)
        .bind(now)
        .bind(id)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        transaction.commit().await?;
        Ok(taken == 1)
    }

    /// Fixes the last instance of operation `id` (held by `owner`): the service's highest
    /// instance id now, its grace having passed (see the module note). Returns it.
    async fn fix_reindex_end(
        &self,
        id: &str,
        owner: &str,
        service: &str,
    ) -> Result<i64, IndexError> {
        let mut transaction = self.database.begin_write().await?;
        let last: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(id), 0) FROM dicom_instances WHERE service = $1",
        )
        .bind(service)
        .fetch_one(&mut *transaction)
        .await?;
        sqlx::query(
            "UPDATE dicom_operations SET end_id = $1 WHERE id = $2 AND lease_owner = $3 \
             AND end_id IS NULL",
        )
        .bind(last)
        .bind(id)
        .bind(owner)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(last)
    }

    /// Indexes the operation's tags in its next batch of instances, or finishes it.
    ///
    /// The batch is read and computed (opening, tokenizing, resealing) before the write
    /// transaction, which only checks that the operation is still this owner's and at the same
    /// cursor, and writes: on SQLite the write lock is held for the writes alone, so stores go
    /// on meanwhile. A study or series row that a store rewrote since the read is merged again
    /// inside the transaction rather than overwritten.
    async fn reindex_batch(&self, id: &str, owner: &str) -> Result<ReindexStep, IndexError> {
        let pool = self.database.pool();
        let Some(operation) = sqlx::query(
            "SELECT service, cursor_id, created_us, end_id FROM dicom_operations \
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await?
        else {
            return Ok(ReindexStep::Idle);
        };
        let service: String = column(&operation, 0)?;
        let cursor: i64 = column(&operation, 1)?;
        let created_us: i64 = column(&operation, 2)?;
        let mut end_id: Option<i64> = column(&operation, 3)?;
        if end_id.is_none() && grace_passed(created_us) {
            end_id = Some(self.fix_reindex_end(id, owner, &service).await?);
        }
        let last_id = end_id.unwrap_or(i64::MAX);
        let tag_rows = sqlx::query(
            "SELECT t.id, t.tag_key, t.path, t.vr, t.private_creator, t.level, t.status, \
             t.query_status, t.operation_id, CAST(0 AS BIGINT) FROM dicom_extended_query_tags t \
             WHERE t.operation_id = $1",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
        let tags = tag_rows
            .iter()
            .map(|row| tag_from_row(row, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = if tags.is_empty() {
            Vec::new()
        } else {
            sqlx::query(
                "SELECT i.id, i.uid_token, i.attributes, i.metadata, i.study_id, st.uid_token, \
                 st.attributes, i.series_id, se.uid_token, se.attributes \
                 FROM dicom_instances i JOIN dicom_studies st ON st.id = i.study_id \
                 JOIN dicom_series se ON se.id = i.series_id \
                 WHERE i.service = $1 AND i.id > $2 AND i.id <= $3 ORDER BY i.id LIMIT $4",
            )
            .bind(&service)
            .bind(cursor)
            .bind(last_id)
            .bind(BATCH)
            .fetch_all(pool)
            .await?
        };
        let batch = if rows.is_empty() {
            None
        } else {
            Some(self.index_rows(&service, &tags, &rows)?)
        };

        let lock = match self.database.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let mut transaction = self.database.begin_write().await?;
        let still: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT cursor_id FROM dicom_operations \
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'{lock}"
        ))
        .bind(id)
        .bind(owner)
        .fetch_optional(&mut *transaction)
        .await?;
        if still != Some(cursor) {
            // Another holder moved it on meanwhile (this lease had expired).
            return Ok(ReindexStep::Idle);
        }
        let now = now_us();
        let Some(batch) = batch else {
            let waited = grace_passed(created_us);
            let more: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM dicom_instances WHERE service = $1 AND id > $2 AND id <= $3 \
                 LIMIT 1",
            )
            .bind(&service)
            .bind(cursor)
            .bind(last_id)
            .fetch_optional(&mut *transaction)
            .await?;
            if !tags.is_empty() && (!waited || more.is_some()) {
                sqlx::query(
                    "UPDATE dicom_operations SET lease_until_us = $1 WHERE id = $2 \
                     AND lease_owner = $3",
                )
                .bind(now + LEASE.as_micros() as i64)
                .bind(id)
                .bind(owner)
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
                return Ok(if more.is_some() {
                    ReindexStep::Progressed
                } else {
                    ReindexStep::Waiting
                });
            }
            sqlx::query(
                "UPDATE dicom_extended_query_tags SET status = 'Ready', operation_id = NULL \
                 WHERE operation_id = $1",
            )
            .bind(id)
            .execute(&mut *transaction)
            .await?;
            sqlx::query(
                "UPDATE dicom_operations SET status = 'succeeded', updated_us = $1, \
                 lease_owner = NULL WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            self.tag_cache.forget(&service);
            return Ok(ReindexStep::Finished);
        };

        for (table, row_column, tokens) in [
            ("dicom_study_tokens", "study_id", &batch.study_tokens),
            ("dicom_series_tokens", "series_id", &batch.series_tokens),
            (
                "dicom_instance_tokens",
                "instance_id",
                &batch.instance_tokens,
            ),
        ] {
            let tokens: Vec<&(i64, Vec<u8>)> = tokens.iter().collect();
            for chunk in tokens.chunks(300) {
                let mut insert = Sql::new(&format!(
                    "INSERT INTO {table} ({row_column}, token) VALUES "
                ));
                for (position, (row_id, token)) in chunk.iter().enumerate() {
                    if position > 0 {
                        insert.push(", ");
                    }
                    insert.push("(");
                    insert.bind(Argument::Integer(*row_id)).push(", ");
                    insert
                        .bind(Argument::Bytes(token.as_slice().into()))
                        .push(")");
                }
                // A row deleted meanwhile takes its tokens' reference with it: insert only
                // for rows that still exist.
                insert.push(" ON CONFLICT DO NOTHING");
                if let Err(error) = insert.query().execute(&mut *transaction).await {
                    // A foreign key failing means a row went meanwhile: redo the batch.
                    tracing::debug!(%error, "a reindex batch met a deleted row; it is redone");
                    return Ok(ReindexStep::Progressed);
                }
            }
        }
        // Instance attributes change only here (an upsert makes a new row): write them if the
        // row is still the one read.
        for (row_id, before, after) in &batch.instance_attributes {
            sqlx::query(
                "UPDATE dicom_instances SET attributes = $1 WHERE id = $2 AND attributes = $3",
            )
            .bind(after.as_slice())
            .bind(*row_id)
            .bind(before.as_slice())
            .execute(&mut *transaction)
            .await?;
        }
        // A changed study or series row loses its digest, so the next store rewrites it.
        for parent in batch
            .study_attributes
            .iter()
            .chain(&batch.series_attributes)
        {
            let table = parent.table.sql_table();
            let written = sqlx::query(&format!(
                "UPDATE {table} SET attributes = $1, digest = NULL WHERE id = $2 \
                 AND attributes = $3"
            ))
            .bind(parent.after.as_slice())
            .bind(parent.id)
            .bind(parent.before.as_slice())
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            if written == 0 {
                self.merge_parent(&mut transaction, &service, parent, lock)
                    .await?;
            }
        }
        let mut failed_tags = BTreeSet::new();
        for (tag_id, instance_id, message) in &batch.errors {
            sqlx::query(
                "INSERT INTO dicom_extended_query_tag_errors (tag_id, instance_id, message, \
                 created_us) SELECT $1, i.id, $3, $4 FROM dicom_instances i WHERE i.id = $2 \
                 ON CONFLICT DO NOTHING",
            )
            .bind(*tag_id)
            .bind(*instance_id)
            .bind(message.as_str())
            .bind(now)
            .execute(&mut *transaction)
            .await?;
            failed_tags.insert(*tag_id);
        }
        // As Azure does: a tag some instance failed is disabled for queries, whose results
        // would be incomplete, until its owner enables it again.
        for tag_id in failed_tags {
            sqlx::query(
                "UPDATE dicom_extended_query_tags SET query_status = 'Disabled' WHERE id = $1",
            )
            .bind(tag_id)
            .execute(&mut *transaction)
            .await?;
        }
        sqlx::query(
            "UPDATE dicom_operations SET cursor_id = $1, processed = processed + $2, \
             updated_us = $3, lease_until_us = $4 WHERE id = $5 AND lease_owner = $6",
        )
        .bind(batch.last_id)
        .bind(rows.len() as i64)
        .bind(now)
        .bind(now + LEASE.as_micros() as i64)
        .bind(id)
        .bind(owner)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(ReindexStep::Progressed)
    }

    /// Adds a batch's elements to a study or series row that changed since the batch read it
    /// (a store rewrote it), inside the batch's transaction; a row gone is left alone.
    async fn merge_parent(
        &self,
        transaction: &mut hds_db::WriteTransaction,
        service: &str,
        parent: &ParentWrite,
        lock: &str,
    ) -> Result<(), IndexError> {
        let table = parent.table.sql_table();
        let current: Option<Vec<u8>> = sqlx::query_scalar(&format!(
            "SELECT attributes FROM {table} WHERE id = $1{lock}"
        ))
        .bind(parent.id)
        .fetch_optional(&mut **transaction)
        .await?;
        let Some(current) = current else {
            return Ok(());
        };
        let binding = RowBinding {
            service,
            table: parent.table.binding_table(),
            row_token: &parent.token,
            column: ATTRIBUTES_COLUMN,
        };
        let mut attributes: Map<String, Value> = from_json(&self.cipher.open(binding, &current)?)?;
        for (path, element) in &parent.elements {
            attributes.insert(path.clone(), element.clone());
        }
        let sealed = self.cipher.seal(binding, &to_json(&attributes)?)?;
        sqlx::query(&format!(
            "UPDATE {table} SET attributes = $1, digest = NULL WHERE id = $2"
        ))
        .bind(sealed.as_slice())
        .bind(parent.id)
        .execute(&mut **transaction)
        .await?;
        Ok(())
    }

    /// What a batch writes for `rows` (see the SELECT in [`Index::reindex_batch`]): tokens,
    /// resealed attributes and errors.
    fn index_rows(
        &self,
        service: &str,
        tags: &[ExtendedQueryTag],
        rows: &[sqlx::any::AnyRow],
    ) -> Result<BatchWrites, IndexError> {
        let cipher = self.cipher.as_ref();
        let open = |table: &'static str, token: &[u8], column_name: &'static str, sealed: &[u8]| {
            cipher.open(
                RowBinding {
                    service,
                    table,
                    row_token: token,
                    column: column_name,
                },
                sealed,
            )
        };
        let mut writes = BatchWrites::default();
        let mut studies: HashMap<i64, ParentRow> = HashMap::new();
        let mut series: HashMap<i64, ParentRow> = HashMap::new();
        for row in rows {
            let instance_id: i64 = column(row, 0)?;
            writes.last_id = instance_id;
            let sop_token: Vec<u8> = column(row, 1)?;
            let metadata: Value = from_json(&open(
                INSTANCE_TABLE,
                &sop_token,
                METADATA_COLUMN,
                &column::<Vec<u8>>(row, 3)?,
            )?)?;
            let Value::Object(metadata) = metadata else {
                continue;
            };
            let mut instance_attributes: Option<Map<String, Value>> = None;
            for tag in tags {
                let found = match extract_values(&metadata, &tag.definition) {
                    Ok(Some(found)) => found,
                    Ok(None) => continue,
                    Err(error) => {
                        writes.errors.push((tag.id, instance_id, error.to_string()));
                        continue;
                    }
                };
                let mut tokens = BTreeSet::new();
                for value in &found.values {
                    value_tokens(cipher, service, &tag.domain(), value, &mut tokens)?;
                }
                let path = tag.definition.path();
                match tag.definition.level {
                    QueryLevel::Instance => {
                        if instance_attributes.is_none() {
                            instance_attributes = Some(from_json(&open(
                                INSTANCE_TABLE,
                                &sop_token,
                                ATTRIBUTES_COLUMN,
                                &column::<Vec<u8>>(row, 2)?,
                            )?)?);
                        }
                        if let Some(attributes) = instance_attributes.as_mut() {
                            attributes.insert(path, found.element);
                        }
                        writes
                            .instance_tokens
                            .extend(tokens.into_iter().map(|token| (instance_id, token)));
                    }
                    QueryLevel::Study | QueryLevel::Series => {
                        let (parents, table, id_at) = if tag.definition.level == QueryLevel::Study {
                            (&mut studies, STUDY_TABLE, 4)
                        } else {
                            (&mut series, SERIES_TABLE, 7)
                        };
                        let parent_id: i64 = column(row, id_at)?;
                        let parent = match parents.entry(parent_id) {
                            Entry::Occupied(known) => known.into_mut(),
                            Entry::Vacant(vacant) => {
                                let token: Vec<u8> = column(row, id_at + 1)?;
                                let sealed: Vec<u8> = column(row, id_at + 2)?;
                                let attributes =
                                    from_json(&open(table, &token, ATTRIBUTES_COLUMN, &sealed)?)?;
                                vacant.insert(ParentRow {
                                    token,
                                    sealed,
                                    attributes,
                                    elements: Vec::new(),
                                })
                            }
                        };
                        if parent.attributes.get(&path) != Some(&found.element) {
                            parent
                                .attributes
                                .insert(path.clone(), found.element.clone());
                            parent.elements.push((path, found.element));
                        }
                        let target = if tag.definition.level == QueryLevel::Study {
                            &mut writes.study_tokens
                        } else {
                            &mut writes.series_tokens
                        };
                        target.extend(tokens.into_iter().map(|token| (parent_id, token)));
                    }
                }
            }
            if let Some(attributes) = instance_attributes {
                let sealed = cipher.seal(
                    RowBinding {
                        service,
                        table: INSTANCE_TABLE,
                        row_token: &sop_token,
                        column: ATTRIBUTES_COLUMN,
                    },
                    &to_json(&attributes)?,
                )?;
                writes
                    .instance_attributes
                    .push((instance_id, column(row, 2)?, sealed));
            }
        }
        for (parents, table, target) in [
            (studies, ParentTable::Study, &mut writes.study_attributes),
            (series, ParentTable::Series, &mut writes.series_attributes),
        ] {
            for (row_id, parent) in parents {
                if parent.elements.is_empty() {
                    continue;
                }
                let after = cipher.seal(
                    RowBinding {
                        service,
                        table: table.binding_table(),
                        row_token: &parent.token,
                        column: ATTRIBUTES_COLUMN,
                    },
                    &to_json(&parent.attributes)?,
                )?;
                target.push(ParentWrite {
                    table,
                    id: row_id,
                    token: parent.token,
                    before: parent.sealed,
                    after,
                    elements: parent.elements,
                });
            }
        }
        Ok(writes)
    }
}

/// Everything one batch writes.
#[derive(Default)]
struct BatchWrites {
    last_id: i64,
    study_tokens: BTreeSet<(i64, Vec<u8>)>,
    series_tokens: BTreeSet<(i64, Vec<u8>)>,
    instance_tokens: BTreeSet<(i64, Vec<u8>)>,
    /// (instance id, sealed attributes as read, as rewritten).
    instance_attributes: Vec<(i64, Vec<u8>, Vec<u8>)>,
    study_attributes: Vec<ParentWrite>,
    series_attributes: Vec<ParentWrite>,
    /// (tag id, instance id, message).
    errors: Vec<(i64, i64, String)>,
}
