//! The orphan sweeper.
//!
//! A STOW writes its blob, then records it in the index; a crash (or a failed commit whose
//! cleanup also failed) between the two leaves a blob nothing references. A delete commits
//! first and removes blobs after; a crash in between leaves them too. Neither is ever served
//! (nothing names them) but they take space and hold ciphertext of data the customer may
//! believe gone. The sweeper removes them.
//!
//! It cannot tell an orphan from a blob whose store has not committed yet, except by age: it
//! only considers blobs last written more than the grace period ago (default an hour, far
//! longer than any store takes between its blob and its commit). It lists those first and
//! reads the index after, so a blob whose commit lands in between is seen as referenced.
//!
//! Study keys left without a study (a store that created its study's key and then failed)
//! are removed by one statement that checks, as it deletes, that the study still does not
//! exist; a store in flight that needs the key writes it again in its own commit.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use hds_blob::{BlobName, BlobStore, SHARD_COUNT};
use hds_db::Database;
use hds_metrics::{OrphanSweepMetrics, SweepRemovals};
use sqlx::Row;

/// The default grace period: blobs younger than this are never swept.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// Why a sweep failed (it removes nothing it is unsure of; the next one tries again).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
    /// Reading the index or deleting study keys failed.
    #[error("index: {0}")]
    Database(#[from] sqlx::Error),
    /// Listing or deleting blobs failed.
    #[error("blob store: {0}")]
    Blobs(#[from] hds_blob::BlobError),
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Blobs older than the grace period that no index row referenced.
    pub orphan_blobs_removed: u64,
    /// Temporary files of abandoned writes older than the grace period.
    pub temporaries_removed: u64,
    /// Study keys without a study.
    pub study_keys_removed: u64,
    /// Blobs older than the grace period that are referenced (kept).
    pub referenced_blobs: u64,
}

/// Sweeps one blob store against the index in one database.
#[derive(Clone)]
pub struct Sweeper {
    database: Database,
    blobs: BlobStore,
    grace: Duration,
    metrics: OrphanSweepMetrics,
}

impl Sweeper {
    /// A sweeper that leaves blobs younger than `grace` alone.
    pub fn new(database: Database, blobs: BlobStore, grace: Duration) -> Sweeper {
        Sweeper {
            database,
            blobs,
            grace,
            metrics: OrphanSweepMetrics::default(),
        }
    }

    /// The same sweeper, counting its sweeps and what they removed in `metrics`.
    pub fn with_metrics(mut self, metrics: OrphanSweepMetrics) -> Sweeper {
        self.metrics = metrics;
        self
    }

    /// Sweeps once.
    pub async fn sweep_once(&self) -> Result<SweepReport, SweepError> {
        let mut report = SweepReport::default();
        let cutoff = SystemTime::now()
            .checked_sub(self.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut candidates: Vec<BlobName> = Vec::new();
        for shard in 0..SHARD_COUNT {
            // SHARD_COUNT is 256: every shard number fits a byte.
            let shard = u8::try_from(shard).unwrap_or(u8::MAX);
            let listing = self.blobs.list_settled(shard, cutoff).await?;
            report.temporaries_removed += listing.temporaries_removed;
            candidates.extend(listing.settled_blobs);
        }
        for segment in self.blobs.pack_segments().await? {
            candidates.extend(self.blobs.list_settled_packed(segment, cutoff).await?);
        }
        if !candidates.is_empty() {
            let referenced = referenced_blob_identities(&self.database).await?;
            for name in candidates {
                // By identity: a packed blob restored from a backup is a file under its
                // identity alone, while its row keeps the name with the record's place.
                if referenced.contains(name.identity()) {
                    report.referenced_blobs += 1;
                } else {
                    self.blobs.delete(&name).await?;
                    report.orphan_blobs_removed += 1;
                }
            }
        }
        let removed = sqlx::query(
            "DELETE FROM dicom_study_keys WHERE NOT EXISTS (SELECT 1 FROM dicom_studies s \
             WHERE s.service = dicom_study_keys.service AND s.uid_token = dicom_study_keys.study_token)",
        )
        .execute(self.database.pool())
        .await?;
        report.study_keys_removed = removed.rows_affected();
        Ok(report)
    }

    /// Sweeps every `interval` until the task is aborted, logging what each sweep removed.
    pub fn spawn(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match self.sweep_once().await {
                    Ok(report) => {
                        self.metrics.record_success(SweepRemovals {
                            blobs: report.orphan_blobs_removed,
                            temporaries: report.temporaries_removed,
                            study_keys: report.study_keys_removed,
                        });
                        tracing::info!(
                            orphan_blobs_removed = report.orphan_blobs_removed,
                            temporaries_removed = report.temporaries_removed,
                            study_keys_removed = report.study_keys_removed,
                            referenced_blobs = report.referenced_blobs,
                            "orphan sweep"
                        )
                    }
                    Err(error) => {
                        self.metrics.record_failure();
                        tracing::warn!(%error, "orphan sweep failed; retrying later")
                    }
                }
            }
        })
    }
}

/// Every blob name the index references (one pass over the instances).
pub(crate) async fn referenced_blob_identities(
    database: &Database,
) -> Result<HashSet<String>, sqlx::Error> {
    let mut names = HashSet::new();
    // An updated instance also references its original version's blob.
    let mut rows = sqlx::query(
        "SELECT blob_name FROM dicom_instances UNION ALL SELECT original_blob_name \
         FROM dicom_instances WHERE original_blob_name IS NOT NULL",
    )
    .fetch(database.pool());
    while let Some(row) = rows.try_next().await? {
        let name = row.try_get::<String, _>(0)?;
        // A name that does not parse is kept whole: it matches no blob, and removes none.
        let identity = match BlobName::parse(&name) {
            Ok(parsed) => parsed.identity().to_owned(),
            Err(_) => name,
        };
        names.insert(identity);
    }
    Ok(names)
}
