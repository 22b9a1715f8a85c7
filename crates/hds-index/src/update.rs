//! Bulk update operations: their rows in `dicom_operations` (kind `update`), with their input
//! and results sealed, and the lease protocol the archive's worker follows.
//!
//! The row's cursor is the number of studies done, in the order the request named them; each
//! study's outcome moves it on in one conditional write (only the lease holder, only from the
//! cursor it read), so a process that dies leaves it at the last study done and the next
//! holder, on this node or another, continues from there once the lease expires. The input
//! (study UIDs and the change dataset) and the results (counts, and errors that name studies)
//! are patient data: sealed under the service's index key, bound to the operation's id.

use serde::{Deserialize, Serialize};

use crate::extended::{now_us, random_hex};
use crate::reindex::LEASE;
use crate::sql::column;
use crate::{Index, IndexError, RowBinding};

/// The sealed columns' table name in their [`RowBinding`].
const OPERATION_TABLE: &str = "operation";
const INPUT_COLUMN: &str = "input";
const RESULTS_COLUMN: &str = "results";

/// What a bulk update was asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateInput {
    /// The studies, in the request's order.
    pub study_instance_uids: Vec<String>,
    /// The change dataset (DICOM JSON), as checked by `hds_dicom::update`.
    pub change_dataset: serde_json::Value,
}

/// A bulk update's results, in Azure's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateResults {
    /// Studies done (updated, failed, or without instances).
    pub study_processed: u64,
    /// Studies whose instances were all updated.
    pub study_updated: u64,
    /// Studies that failed.
    pub study_failed: u64,
    /// Instances updated.
    pub instance_updated: u64,
    /// What failed, one line per study (and the first instances of it).
    pub errors: Vec<String>,
}

/// How starting an update went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartUpdate {
    /// Recorded; the operation's id.
    Started(String),
    /// Another update of the service has not finished (Azure allows one at a time): its id.
    Busy(String),
}

/// An update operation whose lease this process holds.
#[derive(Debug, Clone)]
pub struct ClaimedUpdate {
    /// The operation's id.
    pub id: String,
    /// The service it updates.
    pub service: String,
    /// What it was asked to do.
    pub input: UpdateInput,
    /// What it did so far.
    pub results: UpdateResults,
}

impl Index {
    /// Records a bulk update of `service` (status `notStarted`), unless one is still running.
    pub async fn start_update(
        &self,
        service: &str,
        input: &UpdateInput,
    ) -> Result<StartUpdate, IndexError> {
        let id = random_hex()?;
        let sealed_input = self.seal_operation(
            service,
            &id,
            INPUT_COLUMN,
            &serde_json::to_vec(input)
                .map_err(|error| IndexError::Corrupt(format!("update input: {error}")))?,
        )?;
        let sealed_results = self.seal_results(service, &id, &UpdateResults::default())?;
        let now = now_us();
        let mut transaction = self.database.begin_write().await?;
        let active: Option<String> = sqlx::query_scalar(
            "SELECT id FROM dicom_operations WHERE service = $1 AND kind = 'update' \
             AND status IN ('notStarted', 'running') LIMIT 1",
        )
        .bind(service)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(active) = active {
            return Ok(StartUpdate::Busy(active));
        }
        sqlx::query(
            "INSERT INTO dicom_operations (id, service, kind, status, created_us, updated_us, \
             cursor_id, processed, total, resources, lease_owner, lease_until_us, sealed_input, \
             sealed_results) VALUES ($1, $2, 'update', 'notStarted', $3, $3, 0, 0, $4, '[]', \
             NULL, 0, $5, $6)",
        )
        .bind(&id)
        .bind(service)
        .bind(now)
        .bind(input.study_instance_uids.len() as i64)
        .bind(sealed_input)
        .bind(sealed_results)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        self.update_wakeup.notify_one();
        Ok(StartUpdate::Started(id))
    }

    /// Waits until this process starts an update, or `timeout` passes.
    pub async fn update_started(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.update_wakeup.notified()).await;
    }

    /// Takes the lease of the oldest unfinished update whose lease is free, expired or
    /// `owner`'s and whose service's keys `unlocked` says are in memory; returns it with its
    /// opened input and results.
    pub async fn claim_update(
        &self,
        owner: &str,
        unlocked: impl Fn(&str) -> bool,
    ) -> Result<Option<ClaimedUpdate>, IndexError> {
        // A service without its keys waits (its lease is not taken meanwhile).
        self.claim_operation("update", owner, unlocked, |id, service| async move {
            let Some(row) = sqlx::query(
                "SELECT sealed_input, sealed_results FROM dicom_operations \
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(&id)
            .bind(owner)
            .fetch_optional(self.database.pool())
            .await?
            else {
                return Ok(None);
            };
            let input =
                self.open_operation(&service, &id, INPUT_COLUMN, &column::<Vec<u8>>(&row, 0)?)?;
            let results =
                self.open_operation(&service, &id, RESULTS_COLUMN, &column::<Vec<u8>>(&row, 1)?)?;
            Ok(Some(ClaimedUpdate {
                input: crate::index::from_json::<UpdateInput>(&input)?,
                results: crate::index::from_json::<UpdateResults>(&results)?,
                id,
                service,
            }))
        })
        .await
    }

    /// Renews `owner`'s lease of operation `id`; false when it is no longer `owner`'s.
    pub async fn renew_lease(&self, id: &str, owner: &str) -> Result<bool, IndexError> {
        let now = now_us();
        let mut transaction = self.database.begin_write().await?;
        let renewed = sqlx::query(
            "UPDATE dicom_operations SET lease_until_us = $1 WHERE id = $2 AND lease_owner = $3 \
             AND status = 'running'",
        )
        .bind(now + LEASE.as_micros() as i64)
        .bind(id)
        .bind(owner)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        transaction.commit().await?;
        Ok(renewed == 1)
    }

    /// Records that `claimed` moved on to `results.study_processed` studies done (from the
    /// count it read), and, once every study is done, finishes it: `failed` when any study
    /// failed, as Azure ends an update with errors, else `succeeded`. False (nothing written)
    /// when the lease is no longer `owner`'s or another holder moved it on.
    pub async fn record_update_progress(
        &self,
        claimed: &ClaimedUpdate,
        owner: &str,
        results: &UpdateResults,
    ) -> Result<bool, IndexError> {
        let sealed = self.seal_results(&claimed.service, &claimed.id, results)?;
        let total = claimed.input.study_instance_uids.len() as u64;
        let status = if results.study_processed < total {
            "running"
        } else if results.errors.is_empty() {
            "succeeded"
        } else {
            "failed"
        };
        let now = now_us();
        let mut transaction = self.database.begin_write().await?;
        let written = sqlx::query(
            "UPDATE dicom_operations SET cursor_id = $1, processed = $1, sealed_results = $2, \
             status = $3, updated_us = $4, lease_until_us = $5, \
             lease_owner = CASE WHEN $3 = 'running' THEN lease_owner ELSE NULL END \
             WHERE id = $6 AND lease_owner = $7 AND status = 'running' AND cursor_id = $8",
        )
        .bind(results.study_processed as i64)
        .bind(sealed)
        .bind(status)
        .bind(now)
        .bind(now + LEASE.as_micros() as i64)
        .bind(&claimed.id)
        .bind(owner)
        .bind(claimed.results.study_processed as i64)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        transaction.commit().await?;
        Ok(written == 1)
    }

    /// The results of operation `id` of `service`, when it is an update.
    pub(crate) fn operation_results(
        &self,
        service: &str,
        id: &str,
        sealed: Option<Vec<u8>>,
    ) -> Result<Option<UpdateResults>, IndexError> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let opened = self.open_operation(service, id, RESULTS_COLUMN, &sealed)?;
        Ok(Some(crate::index::from_json(&opened)?))
    }

    fn seal_results(
        &self,
        service: &str,
        id: &str,
        results: &UpdateResults,
    ) -> Result<Vec<u8>, IndexError> {
        self.seal_operation(
            service,
            id,
            RESULTS_COLUMN,
            &serde_json::to_vec(results)
                .map_err(|error| IndexError::Corrupt(format!("update results: {error}")))?,
        )
    }

    fn seal_operation(
        &self,
        service: &str,
        id: &str,
        column: &'static str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, IndexError> {
        self.cipher.seal(
            RowBinding {
                service,
                table: OPERATION_TABLE,
                row_token: id.as_bytes(),
                column,
            },
            plaintext,
        )
    }

    fn open_operation(
        &self,
        service: &str,
        id: &str,
        column: &'static str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, IndexError> {
        self.open_sealed(service, OPERATION_TABLE, id.as_bytes(), column, sealed)
    }
}
