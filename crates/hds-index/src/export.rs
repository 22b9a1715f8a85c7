//! Export operations: the rows that make an export resumable.
//!
//! An export is a `dicom_operations` row of kind `export` (status, lease, the index of the next
//! identifier in `cursor_id`, identifiers done in `processed` out of `total`) and a
//! `dicom_export_operations` row with what the index cannot see: the specification (which
//! identifiers, which destination with any SAS token, the error log's URL), sealed under the
//! service's index key as one opaque document; the position inside the current identifier;
//! the counts; and the error log's lines so far, sealed too (they name instances). The archive
//! decides what the documents mean; this module only keeps them and moves the position, under
//! the same lease rules as the reindex (`reindex.rs`): a step is recorded only by the lease's
//! holder and only from the position it read, so a process that dies leaves the position at
//! its last commit for the next holder.

use crate::extended::{now_us, random_hex};
use crate::reindex::LEASE;
use crate::sql::column;
use crate::{Index, IndexError, RowBinding};

const TABLE: &str = "dicom_export_operations";

/// An export the caller holds the lease of, with its sealed documents opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRecord {
    /// The operation's id.
    pub id: String,
    /// The service it exports from.
    pub service: String,
    /// The specification, as the archive wrote it.
    pub spec: Vec<u8>,
    /// The next identifier to export (an index into the specification's list).
    pub cursor: i64,
    /// How many instances of that identifier are done.
    pub item_cursor: i64,
    /// Instances exported so far.
    pub exported: i64,
    /// Instances (or identifiers that found none) skipped so far.
    pub skipped: i64,
    /// The error log's content so far (JSON lines).
    pub errors: Vec<u8>,
    /// Consecutive steps that failed to write to the destination.
    pub failures: i64,
}

/// What an export's operation reports besides its status: its counts and its specification
/// (which names the error log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportResults {
    /// Instances exported.
    pub exported: i64,
    /// Instances skipped.
    pub skipped: i64,
    /// The specification, as the archive wrote it.
    pub spec: Vec<u8>,
}

/// Where an export step leaves an export, and what it adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportAdvance<'a> {
    /// The position read: (identifier, instance within it).
    pub from: (i64, i64),
    /// The position reached.
    pub to: (i64, i64),
    /// Instances exported by the step.
    pub exported: i64,
    /// Instances skipped by the step.
    pub skipped: i64,
    /// The whole error log after the step, when the step added to it.
    pub errors: Option<&'a [u8]>,
}

fn binding<'a>(service: &'a str, id: &'a str, column: &'static str) -> RowBinding<'a> {
    RowBinding {
        service,
        table: TABLE,
        row_token: id.as_bytes(),
        column,
    }
}

impl Index {
    /// Records a new export of `identifiers` identifiers described by `spec` (sealed here) and
    /// returns its id. The operation worker of any process takes it from there.
    pub async fn create_export(
        &self,
        service: &str,
        spec: &[u8],
        identifiers: i64,
    ) -> Result<String, IndexError> {
        let id = random_hex()?;
        let sealed_spec = self.cipher.seal(binding(service, &id, "spec"), spec)?;
        let sealed_errors = self.cipher.seal(binding(service, &id, "errors"), b"")?;
        let now = now_us();
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "INSERT INTO dicom_operations (id, service, kind, status, created_us, updated_us, \
             cursor_id, processed, total, resources, lease_owner, lease_until_us) \
             VALUES ($1, $2, 'export', 'notStarted', $3, $3, 0, 0, $4, '[]', NULL, 0)",
        )
        .bind(&id)
        .bind(service)
        .bind(now)
        .bind(identifiers)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO dicom_export_operations (operation_id, service, spec, item_cursor, \
             exported, skipped, errors, failures) VALUES ($1, $2, $3, 0, 0, 0, $4, 0)",
        )
        .bind(&id)
        .bind(service)
        .bind(sealed_spec)
        .bind(sealed_errors)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(id)
    }

    /// A fresh lease owner for a process's export worker: a restarted process waits for its
    /// predecessor's lease to expire like any other node.
    pub fn new_lease_owner() -> Result<String, IndexError> {
        random_hex()
    }

    /// Renews `owner`'s lease of export `id` (a long step); whether it still holds it.
    pub async fn renew_export_lease(&self, id: &str, owner: &str) -> Result<bool, IndexError> {
        self.take_lease(id, owner).await
    }

    /// Takes the lease of the oldest export that is free (or already `owner`'s) and whose
    /// service's keys are in memory, and returns it; `None` when there is none.
    pub async fn claim_export(&self, owner: &str) -> Result<Option<ExportRecord>, IndexError> {
        self.claim_operation(
            "export",
            owner,
            |_| true,
            async |id, _| self.read_export(&id, owner).await,
        )
        .await
    }

    async fn read_export(&self, id: &str, owner: &str) -> Result<Option<ExportRecord>, IndexError> {
        let Some(row) = sqlx::query(
            "SELECT o.service, o.cursor_id, e.spec, e.item_cursor, e.exported, e.skipped, \
             e.errors, e.failures FROM dicom_operations o \
             JOIN dicom_export_operations e ON e.operation_id = o.id \
             WHERE o.id = $1 AND o.lease_owner = $2 AND o.status = 'running'",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(self.database.pool())
        .await?
        else {
            return Ok(None);
        };
        let service: String = column(&row, 0)?;
        let spec: Vec<u8> = column(&row, 2)?;
        let errors: Vec<u8> = column(&row, 6)?;
        let spec = self.cipher.open(binding(&service, id, "spec"), &spec)?;
        let errors = self.cipher.open(binding(&service, id, "errors"), &errors)?;
        Ok(Some(ExportRecord {
            id: id.to_owned(),
            cursor: column(&row, 1)?,
            item_cursor: column(&row, 3)?,
            exported: column(&row, 4)?,
            skipped: column(&row, 5)?,
            failures: column(&row, 7)?,
            service,
            spec,
            errors,
        }))
    }

    /// Records a step of export `id` by `owner`: only if it still holds the lease and the
    /// position is still `step.from`. Renews the lease. Whether it was recorded.
    pub async fn advance_export(
        &self,
        service: &str,
        id: &str,
        owner: &str,
        step: ExportAdvance<'_>,
    ) -> Result<bool, IndexError> {
        let sealed_errors = match step.errors {
            Some(errors) => Some(self.cipher.seal(binding(service, id, "errors"), errors)?),
            None => None,
        };
        let now = now_us();
        let mut transaction = self.database.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE dicom_operations SET cursor_id = $1, processed = $1, updated_us = $2, \
             lease_until_us = $3 WHERE id = $4 AND lease_owner = $5 AND status = 'running' \
             AND cursor_id = $6 AND EXISTS (SELECT 1 FROM dicom_export_operations e \
             WHERE e.operation_id = $4 AND e.item_cursor = $7)",
        )
        .bind(step.to.0)
        .bind(now)
        .bind(now + LEASE.as_micros() as i64)
        .bind(id)
        .bind(owner)
        .bind(step.from.0)
        .bind(step.from.1)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if moved != 1 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE dicom_export_operations SET item_cursor = $1, exported = exported + $2, \
             skipped = skipped + $3, failures = 0 WHERE operation_id = $4",
        )
        .bind(step.to.1)
        .bind(step.exported)
        .bind(step.skipped)
        .bind(id)
        .execute(&mut *transaction)
        .await?;
        if let Some(sealed) = sealed_errors {
            sqlx::query("UPDATE dicom_export_operations SET errors = $1 WHERE operation_id = $2")
                .bind(sealed)
                .bind(id)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(true)
    }

    /// Counts a step of export `id` that could not write to its destination; returns the
    /// consecutive failures so far (0 when `owner` no longer holds the lease).
    pub async fn export_failed_attempt(&self, id: &str, owner: &str) -> Result<i64, IndexError> {
        let mut transaction = self.database.begin_write().await?;
        let held: Option<String> = sqlx::query_scalar(
            "SELECT id FROM dicom_operations WHERE id = $1 AND lease_owner = $2 \
             AND status = 'running'",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&mut *transaction)
        .await?;
        if held.is_none() {
            return Ok(0);
        }
        sqlx::query(
            "UPDATE dicom_export_operations SET failures = failures + 1 WHERE operation_id = $1",
        )
        .bind(id)
        .execute(&mut *transaction)
        .await?;
        let failures: i64 = sqlx::query_scalar(
            "SELECT failures FROM dicom_export_operations WHERE operation_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(failures)
    }

    /// Ends export `id` held by `owner`: `succeeded` or failed.
    pub async fn finish_export(
        &self,
        id: &str,
        owner: &str,
        succeeded: bool,
    ) -> Result<bool, IndexError> {
        let mut transaction = self.database.begin_write().await?;
        let done = sqlx::query(
            "UPDATE dicom_operations SET status = $1, updated_us = $2, lease_owner = NULL \
             WHERE id = $3 AND lease_owner = $4 AND status = 'running'",
        )
        .bind(if succeeded { "succeeded" } else { "failed" })
        .bind(now_us())
        .bind(id)
        .bind(owner)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        transaction.commit().await?;
        Ok(done == 1)
    }

    /// The counts and specification of export `id` of `service`; `None` when it is not an
    /// export of that service.
    pub async fn export_results(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Option<ExportResults>, IndexError> {
        let Some(row) = sqlx::query(
            "SELECT spec, exported, skipped FROM dicom_export_operations \
             WHERE operation_id = $1 AND service = $2",
        )
        .bind(id)
        .bind(service)
        .fetch_optional(self.database.pool())
        .await?
        else {
            return Ok(None);
        };
        let spec: Vec<u8> = column(&row, 0)?;
        Ok(Some(ExportResults {
            spec: self.cipher.open(binding(service, id, "spec"), &spec)?,
            exported: column(&row, 1)?,
            skipped: column(&row, 2)?,
        }))
    }
}
