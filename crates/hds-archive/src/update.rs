//! Bulk update (`studies/$bulkUpdate`): the operation's background worker, and the rewriting of
//! one study's instances.
//!
//! Each instance is read whole (decrypted in memory, never on disk; at most
//! [`MAX_UPDATE_INSTANCE_BYTES`]), rewritten by `hds_dicom::update` and stored through the same
//! path as a STOW-RS store: a new sealed blob under a fresh blob key wrapped by the study's key,
//! the row and its search tokens replaced in one commit with an `update` change feed entry
//! ([`StoreMode::Update`]). The row keeps the version before the first update as its original
//! (its blob and wrapped key, under the same study key, so deleting the study shreds both);
//! the version between two updates is deleted, as Azure keeps only the original and the latest.
//!
//! The worker takes one operation's lease at a time (`hds_index::Index::claim_update`), does its
//! next study and records it: a restart, or a node that dies, resumes at the first study not
//! recorded (a study half done is done again: its updated instances are updated once more, from
//! their latest version, which yields the same attributes). A service whose key access is lost
//! is left waiting, its lease not renewed, until the keys are back.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use hds_dicom::update::ChangeDataset;
use hds_index::{ClaimedUpdate, ServiceKeyrings, StoreMode};

use crate::store::StoreOutcome;
use crate::{Archive, ArchiveError, Scope, ServiceArchive};

/// The largest instance an update rewrites: it is read and rewritten in memory, as a
/// transcoding is.
pub const MAX_UPDATE_INSTANCE_BYTES: u64 = 512 * 1024 * 1024;

/// How many instance errors of one study an operation's results list (as Azure: the first 5).
const ERRORS_PER_STUDY: usize = 5;

/// How often a study's walk renews its operation's lease (well inside the 10 s lease).
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// What updating one study did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StudyUpdate {
    /// Instances updated.
    pub updated: u64,
    /// Instances that could not be, one line each naming its UIDs (never a value).
    pub errors: Vec<String>,
}

impl ServiceArchive {
    /// Records a bulk update of this service (Azure's `studies/$bulkUpdate`), which the worker
    /// then runs; [`hds_index::StartUpdate::Busy`] when another one has not finished.
    pub async fn start_update(
        &self,
        input: &hds_index::UpdateInput,
    ) -> Result<hds_index::StartUpdate, ArchiveError> {
        if !self.keyring.is_unlocked() {
            return Err(ArchiveError::KeyAccessLost);
        }
        Ok(self.index.start_update(&self.service, input).await?)
    }

    /// Rewrites every instance of `study` with `change`. A study without instances updates
    /// none; an instance deleted meanwhile is skipped. `lease` (operation id, owner) is
    /// renewed every few seconds, and the walk stops when it is lost.
    pub async fn update_study(
        &self,
        study: &str,
        change: &ChangeDataset,
        lease: Option<(&str, &str)>,
    ) -> Result<StudyUpdate, ArchiveError> {
        let records = self
            .index
            .find_instances(&self.service, Scope::Study(study))
            .await?;
        let mut outcome = StudyUpdate::default();
        let mut renewed = Instant::now();
        for record in records {
            if let Some((id, owner)) = lease
                && renewed.elapsed() >= RENEW_EVERY
            {
                if !self.index.renew_lease(id, owner).await? {
                    return Err(ArchiveError::Internal("the update's lease was lost".into()));
                }
                renewed = Instant::now();
            }
            let failed = |why: &str| {
                format!(
                    "Instance UIDs - StudyInstanceUID: {}, SeriesInstanceUID: {}, \
                     SOPInstanceUID: {}: {why}",
                    record.study_instance_uid, record.series_instance_uid, record.sop_instance_uid
                )
            };
            if record.size > MAX_UPDATE_INSTANCE_BYTES {
                outcome
                    .errors
                    .push(failed("the instance is larger than an update rewrites"));
                continue;
            }
            let bytes: Vec<Bytes> = self
                .open_instance(&record)
                .await?
                .try_collect()
                .await
                .map_err(|error| ArchiveError::internal("reading an instance", error))?;
            let change = change.clone();
            let rewritten = tokio::task::spawn_blocking(move || change.apply(&bytes.concat()))
                .await
                .map_err(|error| ArchiveError::internal("update task", error))?;
            let rewritten = match rewritten {
                Ok(rewritten) => rewritten,
                Err(error) => {
                    tracing::warn!(%error, "an instance could not be rewritten by an update");
                    outcome
                        .errors
                        .push(failed("the instance could not be rewritten"));
                    continue;
                }
            };
            let body = futures::stream::iter([Ok::<_, ArchiveError>(Bytes::from(rewritten))]);
            match self.store(body, Some(study), StoreMode::Update).await {
                Ok(StoreOutcome::Stored(_)) => outcome.updated += 1,
                Ok(StoreOutcome::Refused(refusal)) => {
                    tracing::warn!(reason = ?refusal.reason, "an updated instance was refused");
                    outcome
                        .errors
                        .push(failed("the updated instance was refused"));
                }
                // Deleted meanwhile: nothing left to update.
                Err(ArchiveError::NotFound(_)) => {}
                Err(ArchiveError::KeyAccessLost) => return Err(ArchiveError::KeyAccessLost),
                Err(error) => {
                    tracing::warn!(%error, "storing an updated instance failed");
                    outcome
                        .errors
                        .push(failed("storing the updated instance failed"));
                }
            }
        }
        Ok(outcome)
    }
}

/// Starts the task that runs bulk updates on this process: it takes the lease of any update
/// whose lease is free (or expired) and whose service's keys are in `keyrings`, and works
/// through its studies, checking for new ones every `idle_interval` and whenever this process
/// starts one.
pub fn spawn_update_worker(
    archive: Archive,
    keyrings: ServiceKeyrings,
    idle_interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // A fresh owner per process: a restarted process waits for its predecessor's lease to
        // expire like any other node.
        let owner = match random_owner() {
            Some(owner) => owner,
            None => {
                tracing::error!("the update worker could not start");
                return;
            }
        };
        loop {
            match update_step(&archive, &keyrings, &owner).await {
                Ok(true) => tokio::task::yield_now().await,
                Ok(false) => archive.index.update_started(idle_interval).await,
                Err(error) => {
                    tracing::warn!(%error, "an update step failed; retrying later");
                    archive.index.update_started(idle_interval).await;
                }
            }
        }
    })
}

fn random_owner() -> Option<String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// One study of the first update this worker holds or can take; false when there was none.
pub async fn update_step(
    archive: &Archive,
    keyrings: &ServiceKeyrings,
    owner: &str,
) -> Result<bool, ArchiveError> {
    let unlocked = |service: &str| {
        keyrings
            .get(service)
            .is_some_and(|keyring| keyring.is_unlocked())
    };
    let Some(claimed) = archive.index.claim_update(owner, unlocked).await? else {
        return Ok(false);
    };
    let Some(keyring) = keyrings.get(&claimed.service) else {
        return Ok(false);
    };
    let service = archive.service(&claimed.service, keyring);
    let mut results = claimed.results.clone();
    let total = claimed.input.study_instance_uids.len() as u64;
    if results.study_processed < total {
        let study = &claimed.input.study_instance_uids[results.study_processed as usize];
        match do_study(&service, &claimed, owner, study).await {
            Ok(outcome) if outcome.errors.is_empty() => {
                if outcome.updated > 0 {
                    results.study_updated += 1;
                }
                results.instance_updated += outcome.updated;
            }
            Ok(outcome) => {
                results.study_failed += 1;
                results.instance_updated += outcome.updated;
                results
                    .errors
                    .push(format!("Failed to update instances for study {study}"));
                let more = outcome.errors.len() > ERRORS_PER_STUDY;
                results
                    .errors
                    .extend(outcome.errors.into_iter().take(ERRORS_PER_STUDY));
                if more {
                    results.errors.push(
                        "There are more instances failed to update than listed above.".into(),
                    );
                }
            }
            // The operation waits for the keys (or the lease moved on): nothing recorded.
            Err(ArchiveError::KeyAccessLost) => return Ok(false),
            Err(ArchiveError::Internal(message)) if message.contains("lease was lost") => {
                return Ok(false);
            }
            Err(error) => {
                tracing::warn!(%error, "a study of an update failed");
                results.study_failed += 1;
                results
                    .errors
                    .push(format!("Failed to update instances for study {study}"));
            }
        }
        results.study_processed += 1;
    }
    archive
        .index
        .record_update_progress(&claimed, owner, &results)
        .await?;
    Ok(true)
}

async fn do_study(
    service: &ServiceArchive,
    claimed: &ClaimedUpdate,
    owner: &str,
    study: &str,
) -> Result<StudyUpdate, ArchiveError> {
    let change = ChangeDataset::parse(&claimed.input.change_dataset).map_err(|_| {
        ArchiveError::Integrity("an update's stored change dataset does not parse".into())
    })?;
    service
        .update_study(study, &change, Some((&claimed.id, owner)))
        .await
}
