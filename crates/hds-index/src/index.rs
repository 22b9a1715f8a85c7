//! Storing, finding and deleting instances.

use std::collections::BTreeSet;
use std::sync::Arc;

use hds_crypto::keys::{BlobKey, InstanceBinding};
use hds_db::{Database, DbError, Migration};
use hds_dicom::{FrameMap, ParsedInstance};
use hds_metrics::GroupCommitMetrics;

use crate::changefeed::{self, ChangeAction, ChangeState, NewChange};
use crate::keyring::{InstanceKeys, KeyringError, ServiceKeyring, StoredBlobKey};
use crate::sql::{Argument, Sql, column};
use crate::store::{CommitGate, GroupWriter, PreparedInstance, store_alone};
use crate::{IndexCipher, IndexError, RowBinding};

/// The component name of the index's migrations in the shared database.
pub(crate) const COMPONENT: &str = "dicom-index";

/// The index's schema steps. Never edit a released one: add a new one.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "studies, series, instances and their search tokens",
        sqlite: include_str!("../migrations/sqlite/0001_index.sql"),
        postgres: include_str!("../migrations/postgres/0001_index.sql"),
    },
    Migration {
        version: 2,
        description: "service root keys, study keys, wrapped blob keys, platform KEKs",
        sqlite: include_str!("../migrations/sqlite/0002_keys.sql"),
        postgres: include_str!("../migrations/postgres/0002_keys.sql"),
    },
    Migration {
        version: 3,
        description: "keyed digests of study and series rows",
        sqlite: include_str!("../migrations/sqlite/0003_row_digests.sql"),
        postgres: include_str!("../migrations/postgres/0003_row_digests.sql"),
    },
    Migration {
        version: 4,
        description: "studies of a service in store order",
        sqlite: include_str!("../migrations/sqlite/0004_search_paths.sql"),
        postgres: include_str!("../migrations/postgres/0004_search_paths.sql"),
    },
    Migration {
        version: 5,
        description: "the change feed and its per-service heads",
        sqlite: include_str!("../migrations/sqlite/0005_changefeed.sql"),
        postgres: include_str!("../migrations/postgres/0005_changefeed.sql"),
    },
    Migration {
        version: 6,
        description: "extended query tags, their errors, and long-running operations",
        sqlite: include_str!("../migrations/sqlite/0006_extended_query_tags.sql"),
        postgres: include_str!("../migrations/postgres/0006_extended_query_tags.sql"),
    },
    Migration {
        version: 7,
        description: "UPS workitems and their search tokens",
        sqlite: include_str!("../migrations/sqlite/0007_workitems.sql"),
        postgres: include_str!("../migrations/postgres/0007_workitems.sql"),
    },
    Migration {
        version: 8,
        description: "data partitions, and the partition of each change feed entry",
        sqlite: include_str!("../migrations/sqlite/0008_partitions.sql"),
        postgres: include_str!("../migrations/postgres/0008_partitions.sql"),
    },
    Migration {
        version: 9,
        description: "original versions of updated instances, sealed operation input and results",
        sqlite: include_str!("../migrations/sqlite/0009_bulk_update.sql"),
        postgres: include_str!("../migrations/postgres/0009_bulk_update.sql"),
    },
    Migration {
        version: 10,
        description: "export operations: sealed specifications, positions, counts, error logs",
        sqlite: include_str!("../migrations/sqlite/0010_export.sql"),
        postgres: include_str!("../migrations/postgres/0010_export.sql"),
    },
    Migration {
        version: 11,
        description: "the last instance a reindex walks, fixed once its grace has passed",
        sqlite: include_str!("../migrations/sqlite/0011_reindex_end.sql"),
        postgres: include_str!("../migrations/postgres/0011_reindex_end.sql"),
    },
    Migration {
        version: 12,
        description: "a study's series and instance counts and sealed modalities on its row",
        sqlite: include_str!("../migrations/sqlite/0012_study_summary.sql"),
        postgres: include_str!("../migrations/postgres/0012_study_summary.sql"),
    },
];

/// The token domains of the three UIDs; the UID tokens are also the rows' identities.
pub(crate) const STUDY_UID: &str = "StudyInstanceUID";
pub(crate) const SERIES_UID: &str = "SeriesInstanceUID";
pub(crate) const SOP_UID: &str = "SOPInstanceUID";
/// Derived from the series' modalities, never stored as a study token.
pub(crate) const MODALITIES_IN_STUDY: &str = "ModalitiesInStudy";

/// How many tokens one INSERT carries (well under SQLite's parameter limit).
pub(crate) const TOKENS_PER_INSERT: usize = 400;

/// The index of all DICOM services of this hds, over one database. Cheap to clone.
#[derive(Clone)]
pub struct Index {
    pub(crate) database: Database,
    pub(crate) cipher: Arc<dyn IndexCipher>,
    /// The group-commit writer of instance stores (SQLite); `None` on PostgreSQL, where each
    /// store is a transaction of its own.
    writer: Option<GroupWriter>,
    /// Commit sizes of instance stores.
    commits: GroupCommitMetrics,
    /// The extended query tags stores index, per service, as last read.
    pub(crate) tag_cache: Arc<crate::extended::TagCache>,
    /// Wakes this process's operation worker (tags were added).
    pub(crate) reindex_wakeup: Arc<tokio::sync::Notify>,
    /// Wakes this process's bulk update worker (an update was started).
    pub(crate) update_wakeup: Arc<tokio::sync::Notify>,
}

/// An instance to record, after its blob was written.
pub struct NewInstance<'a> {
    /// The DICOM service, e.g. `default/dicom`.
    pub service: &'a str,
    /// What parsing found.
    pub parsed: &'a ParsedInstance,
    /// The opaque name of the blob holding the instance's bytes.
    pub blob_name: &'a str,
    /// The blob's plaintext length in bytes.
    pub size: u64,
    /// The blob's key wrapped by its study key, and the wrapped study key it was wrapped
    /// under (from [`crate::StudyKeyLease::seal_blob_key`]).
    pub keys: &'a InstanceKeys,
    /// Whether an instance of the same SOPInstanceUID is refused or replaced.
    pub mode: StoreMode,
}

/// What a store does when the service already holds an instance of the same SOPInstanceUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreMode {
    /// Refuses it ([`StoreOutcome::AlreadyExists`]): STOW-RS's `POST`.
    #[default]
    Create,
    /// Replaces it, in the same study and series ([`StoreOutcome::Replaced`]): the upsert
    /// `PUT`.
    Replace,
    /// Replaces it with a version whose attributes a bulk update changed
    /// ([`StoreOutcome::Updated`]): the instance must exist in the same study and series; the
    /// row keeps the first version it replaced as its original (Azure keeps the original and
    /// the latest version, no intermediate one), and the change feed says `update`.
    Update,
}

/// An instance to record whose blob is written and sealed under `blob_key`: its blob key is
/// not wrapped yet (see [`Index::store_sealed_instance`]).
pub struct SealedInstance<'a> {
    /// What parsing found.
    pub parsed: &'a ParsedInstance,
    /// The opaque name of the blob holding the instance's bytes.
    pub blob_name: &'a str,
    /// The key the blob is sealed under.
    pub blob_key: &'a BlobKey,
    /// The blob's plaintext length in bytes.
    pub size: u64,
    /// Passes once the blob is on stable storage; the row commits only after it did.
    pub durable: CommitGate,
    /// Whether an instance of the same SOPInstanceUID is refused or replaced.
    pub mode: StoreMode,
}

/// How often [`Index::store_sealed_instance`] tries when the study's key changes meanwhile.
const STUDY_KEY_ATTEMPTS: u32 = 4;

/// What storing an instance did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Recorded; it is now visible.
    Stored,
    /// Recorded in place of the instance of the same SOPInstanceUID ([`StoreMode::Replace`]),
    /// whose row is gone: the caller deletes its blob, named here, as a delete would.
    Replaced {
        /// The replaced instance's blob, which no row references any more.
        previous_blob_name: String,
    },
    /// An instance with this SOPInstanceUID already exists in the service (with
    /// [`StoreMode::Replace`]: in another study or series); nothing changed (the caller deletes
    /// the blob it wrote).
    AlreadyExists,
    /// The study key the blob key was wrapped under is no longer the study's (the study was
    /// deleted, or the root key rotated, meanwhile); nothing changed. The caller gets the
    /// study key again, re-wraps the blob key and stores again.
    StudyKeyChanged,
    /// [`StoreMode::Update`]: recorded in place of the instance's current version. The first
    /// update keeps the version it replaced as the original (its blob stays); a later one
    /// names the intermediate version's blob, which no row references any more.
    Updated {
        /// The blob the caller deletes, if any.
        superseded_blob_name: Option<String>,
    },
    /// [`StoreMode::Update`]: the instance is not (any more) in that study and series;
    /// nothing changed.
    NotFound,
}

/// Which instances a retrieve or delete addresses.
#[derive(Debug, Clone, Copy)]
pub enum DeleteScope<'a> {
    /// A whole study.
    Study(&'a str),
    /// A series of a study.
    Series(&'a str, &'a str),
    /// One instance of a series of a study.
    Instance(&'a str, &'a str, &'a str),
}

impl DeleteScope<'_> {
    /// Whether an instance of `study` and `series` lies in this scope (the SOP instance is
    /// matched by the row's own token).
    fn contains(&self, study: &str, series: &str) -> bool {
        match *self {
            DeleteScope::Study(scope_study) => scope_study == study,
            DeleteScope::Series(scope_study, scope_series)
            | DeleteScope::Instance(scope_study, scope_series, _) => {
                scope_study == study && scope_series == series
            }
        }
    }
}

/// What retrieval needs of one stored instance.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    /// StudyInstanceUID.
    pub study_instance_uid: String,
    /// SeriesInstanceUID.
    pub series_instance_uid: String,
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// The stored transfer syntax.
    pub transfer_syntax_uid: String,
    /// The blob's opaque name.
    pub blob_name: String,
    /// The blob's length.
    pub size: u64,
    /// Where the frames are.
    pub frames: Option<FrameMap>,
    /// The blob's wrapped key and its study's wrapped key: what
    /// [`crate::ServiceKeyring::open_blob_key`] needs. `None` only if the row was damaged.
    pub blob_key: Option<StoredBlobKey>,
}

impl InstanceRecord {
    /// The instance its blob key must have been wrapped for
    /// ([`crate::ServiceKeyring::open_blob_key`]).
    pub fn binding(&self) -> InstanceBinding<'_> {
        InstanceBinding {
            blob_name: &self.blob_name,
            study_instance_uid: &self.study_instance_uid,
            series_instance_uid: &self.series_instance_uid,
            sop_instance_uid: &self.sop_instance_uid,
        }
    }
}

/// The three UIDs of an instance, sealed together in its row: retrieval must name them but the
/// row only holds their tokens.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SealedUids {
    pub(crate) study: String,
    pub(crate) series: String,
    pub(crate) sop: String,
}

/// Names of tables and sealed columns, part of every [`RowBinding`].
pub(crate) const STUDY_TABLE: &str = "study";
pub(crate) const SERIES_TABLE: &str = "series";
pub(crate) const INSTANCE_TABLE: &str = "instance";
pub(crate) const ATTRIBUTES_COLUMN: &str = "attributes";
pub(crate) const METADATA_COLUMN: &str = "metadata";
pub(crate) const UIDS_COLUMN: &str = "uids";
pub(crate) const FRAMES_COLUMN: &str = "frames";
pub(crate) const MODALITIES_COLUMN: &str = "modalities";

impl Index {
    /// Opens (creating if needed) the index at `url` (`sqlite:PATH` or `postgres://...`) and
    /// runs its migrations.
    pub async fn connect(url: &str, cipher: Arc<dyn IndexCipher>) -> Result<Index, IndexError> {
        let database = Database::connect(url).await.map_err(|error| match error {
            DbError::UnsupportedUrl => IndexError::UnsupportedUrl,
            other => IndexError::Setup(other),
        })?;
        Index::open(database, cipher).await
    }

    /// The index over an already open database (shared with the other components), running
    /// its migrations.
    pub async fn open(
        database: Database,
        cipher: Arc<dyn IndexCipher>,
    ) -> Result<Index, IndexError> {
        Index::open_with_metrics(database, cipher, GroupCommitMetrics::default()).await
    }

    /// [`Index::open`], recording the size of each commit of instance stores in `commits`
    /// (on PostgreSQL every store is a commit of its own).
    pub async fn open_with_metrics(
        database: Database,
        cipher: Arc<dyn IndexCipher>,
        commits: GroupCommitMetrics,
    ) -> Result<Index, IndexError> {
        database.migrate(COMPONENT, MIGRATIONS).await?;
        let writer = match database.backend() {
            hds_db::Backend::Sqlite => Some(GroupWriter::start(database.clone(), commits.clone())),
            hds_db::Backend::Postgres => None,
        };
        Ok(Index {
            database,
            cipher,
            writer,
            commits,
            tag_cache: Arc::default(),
            reindex_wakeup: Arc::default(),
            update_wakeup: Arc::default(),
        })
    }

    /// The database under the index.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The blind token a study row is keyed by (what its study key is stored under).
    pub fn study_token(
        &self,
        service: &str,
        study_instance_uid: &str,
    ) -> Result<Vec<u8>, IndexError> {
        self.cipher.token(service, STUDY_UID, study_instance_uid)
    }

    /// Records an instance and its study and series, atomically. Of concurrent stores of the
    /// same SOPInstanceUID exactly one gets [`StoreOutcome::Stored`].
    ///
    /// The study's and series' attributes (and their search tokens) are replaced by those of
    /// the instance stored last. On SQLite the store joins the group writer's next commit
    /// (see the `store` module); on PostgreSQL it is a transaction of its own.
    pub async fn store_instance(
        &self,
        instance: NewInstance<'_>,
    ) -> Result<StoreOutcome, IndexError> {
        self.store_gated(instance, &CommitGate::open()).await
    }

    /// Records an instance once `gate` passed (see [`Index::store_instance`]).
    async fn store_gated(
        &self,
        instance: NewInstance<'_>,
        gate: &CommitGate,
    ) -> Result<StoreOutcome, IndexError> {
        let extended_tags = self.indexed_tags(instance.service).await?;
        let prepared = PreparedInstance::new(self.cipher.as_ref(), &instance, &extended_tags)?;
        let extended_errors = prepared.extended_errors.clone();
        let sop_token = if extended_errors.is_empty() {
            Vec::new()
        } else {
            self.cipher
                .token(instance.service, SOP_UID, &instance.parsed.sop_instance_uid)?
        };
        let outcome = match &self.writer {
            Some(writer) => writer.store(prepared, gate.clone()).await,
            None => {
                gate.passed().await?;
                let outcome = store_alone(&self.database, &prepared).await;
                self.commits.record(1);
                outcome
            }
        }?;
        if !extended_errors.is_empty()
            && matches!(
                outcome,
                StoreOutcome::Stored | StoreOutcome::Replaced { .. }
            )
        {
            // The instance is stored and acknowledged whatever happens here: an error list
            // that misses it is better than a store reported failed that did commit.
            if let Err(error) = self
                .record_store_errors(instance.service, &sop_token, &extended_errors)
                .await
            {
                tracing::warn!(%error, "recording an instance's extended query tag errors failed");
            }
        }
        Ok(outcome)
    }

    /// Records an instance whose blob is written, in `keyring`'s service: wraps its blob key
    /// under its study's key (the first instance of a study brings the study's new key, stored
    /// in the same commit) and stores the row. The study key can change between reading it and
    /// the commit (the study deleted, the root key rotated): then it is read again and the blob
    /// key wrapped again (the blob stays as written), up to a few times, and
    /// [`StoreOutcome::StudyKeyChanged`] means it kept changing. Callers need no key protocol
    /// of their own.
    pub async fn store_sealed_instance(
        &self,
        keyring: &ServiceKeyring,
        instance: SealedInstance<'_>,
    ) -> Result<StoreOutcome, IndexError> {
        let study = instance.parsed.study_instance_uid.as_str();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let lease = match keyring.study_key_for_store(study).await {
                Ok(lease) => lease,
                Err(KeyringError::RootKeyChanged) if attempts < STUDY_KEY_ATTEMPTS => continue,
                Err(error) => return Err(error.into()),
            };
            let owner = InstanceBinding {
                blob_name: instance.blob_name,
                study_instance_uid: &instance.parsed.study_instance_uid,
                series_instance_uid: &instance.parsed.series_instance_uid,
                sop_instance_uid: &instance.parsed.sop_instance_uid,
            };
            let keys = lease.seal_blob_key(&owner, instance.blob_key);
            let stored = self
                .store_gated(
                    NewInstance {
                        service: keyring.scope(),
                        parsed: instance.parsed,
                        blob_name: instance.blob_name,
                        size: instance.size,
                        keys: &keys,
                        mode: instance.mode,
                    },
                    &instance.durable,
                )
                .await?;
            match stored {
                StoreOutcome::StudyKeyChanged if attempts < STUDY_KEY_ATTEMPTS => {
                    keyring.forget_study_key(study);
                }
                outcome @ (StoreOutcome::Stored
                | StoreOutcome::Replaced { .. }
                | StoreOutcome::Updated { .. })
                    if keys.new_study_key_generation.is_some() =>
                {
                    keyring.study_key_stored(study);
                    return Ok(outcome);
                }
                other => return Ok(other),
            }
        }
    }

    /// The instances in scope, ordered by series then instance (store order); empty if none.
    pub async fn find_instances(
        &self,
        service: &str,
        scope: DeleteScope<'_>,
    ) -> Result<Vec<InstanceRecord>, IndexError> {
        self.find_instance_versions(service, scope, false).await
    }

    /// [`Index::find_instances`], or with `original` the versions they had before their first
    /// bulk update (the current version for one never updated), as Azure serves them under
    /// `msdicom-request-original: true`. An original has no frame map: its frames are not
    /// served.
    pub async fn find_instance_versions(
        &self,
        service: &str,
        scope: DeleteScope<'_>,
        original: bool,
    ) -> Result<Vec<InstanceRecord>, IndexError> {
        let mut sql = Sql::new(if original {
            "SELECT i.uid_token, COALESCE(i.original_blob_name, i.blob_name), \
             COALESCE(i.original_size, i.size), i.transfer_syntax_uid, i.uids, \
             CASE WHEN i.original_blob_name IS NULL THEN i.frames ELSE NULL END, \
             st.uid_token, COALESCE(i.original_blob_key, i.blob_key), \
             (SELECT k.wrapped_key FROM dicom_study_keys k \
             WHERE k.service = i.service AND k.study_token = st.uid_token) \
             FROM dicom_instances i"
        } else {
            "SELECT i.uid_token, i.blob_name, i.size, i.transfer_syntax_uid, i.uids, i.frames, \
             st.uid_token, i.blob_key, (SELECT k.wrapped_key FROM dicom_study_keys k \
             WHERE k.service = i.service AND k.study_token = st.uid_token) \
             FROM dicom_instances i"
        });
        self.push_scope(&mut sql, service, scope)?;
        sql.push(" ORDER BY i.series_id, i.id");
        let rows = sql.query().fetch_all(self.database.pool()).await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let sop_token: Vec<u8> = column(&row, 0)?;
            let size: i64 = column(&row, 2)?;
            let uids: SealedUids = from_json(&self.open_sealed(
                service,
                INSTANCE_TABLE,
                &sop_token,
                UIDS_COLUMN,
                &column::<Vec<u8>>(&row, 4)?,
            )?)?;
            let frames = match column::<Option<Vec<u8>>>(&row, 5)? {
                Some(sealed) => Some(from_json(&self.open_sealed(
                    service,
                    INSTANCE_TABLE,
                    &sop_token,
                    FRAMES_COLUMN,
                    &sealed,
                )?)?),
                None => None,
            };
            let blob_key = match (
                column::<Option<Vec<u8>>>(&row, 7)?,
                column::<Option<Vec<u8>>>(&row, 8)?,
            ) {
                (Some(wrapped_blob_key), Some(wrapped_study_key)) => Some(StoredBlobKey {
                    study_token: column(&row, 6)?,
                    wrapped_study_key,
                    wrapped_blob_key,
                }),
                _ => None,
            };
            // The sealed UIDs are bound to the row's own token; a row moved under another study
            // or series (its foreign keys rewritten) still names its own, and is refused here
            // rather than served as part of a study or series it never belonged to.
            if !scope.contains(&uids.study, &uids.series) {
                return Err(IndexError::Corrupt(
                    "an instance row is filed under a study or series it does not belong to".into(),
                ));
            }
            records.push(InstanceRecord {
                study_instance_uid: uids.study,
                series_instance_uid: uids.series,
                sop_instance_uid: uids.sop,
                transfer_syntax_uid: column(&row, 3)?,
                blob_name: column(&row, 1)?,
                size: u64::try_from(size)
                    .map_err(|_| IndexError::Corrupt("negative instance size".into()))?,
                frames,
                blob_key,
            });
        }
        Ok(records)
    }

    /// The metadata (DICOM JSON, bulk data left out) of the instances in scope, same order.
    pub async fn find_metadata(
        &self,
        service: &str,
        scope: DeleteScope<'_>,
    ) -> Result<Vec<serde_json::Value>, IndexError> {
        self.metadata_documents(service, scope)
            .await?
            .iter()
            .map(|document| from_json(document))
            .collect()
    }

    /// The metadata of the instances in scope as one DICOM JSON array (same order as
    /// [`Index::find_metadata`]), or `None` if there are none.
    ///
    /// The stored documents are joined as they are, without parsing and serializing them
    /// again: each was written by the index as one JSON value and opens only if unaltered.
    pub async fn find_metadata_json(
        &self,
        service: &str,
        scope: DeleteScope<'_>,
    ) -> Result<Option<Vec<u8>>, IndexError> {
        let documents = self.metadata_documents(service, scope).await?;
        if documents.is_empty() {
            return Ok(None);
        }
        Ok(Some(hds_dicom::json_array(
            documents.iter().map(Vec::as_slice),
        )))
    }

    /// The opened metadata documents (JSON bytes) of the instances in scope, in series then
    /// store order.
    async fn metadata_documents(
        &self,
        service: &str,
        scope: DeleteScope<'_>,
    ) -> Result<Vec<Vec<u8>>, IndexError> {
        let mut sql = Sql::new("SELECT i.uid_token, i.metadata FROM dicom_instances i");
        self.push_scope(&mut sql, service, scope)?;
        sql.push(" ORDER BY i.series_id, i.id");
        let rows = sql.query().fetch_all(self.database.pool()).await?;
        rows.iter()
            .map(|row| {
                let sop_token: Vec<u8> = column(row, 0)?;
                let sealed: Vec<u8> = column(row, 1)?;
                self.open_sealed(
                    service,
                    INSTANCE_TABLE,
                    &sop_token,
                    METADATA_COLUMN,
                    &sealed,
                )
            })
            .collect()
    }

    /// Removes the instances in scope (and studies/series left empty) atomically, returning the
    /// blob names the caller must delete; empty if nothing matched.
    pub async fn delete(
        &self,
        service: &str,
        scope: DeleteScope<'_>,
    ) -> Result<Vec<String>, IndexError> {
        let mut select = Sql::new(
            "SELECT i.id, i.blob_name, i.series_id, i.study_id, i.uid_token, i.uids, \
             i.original_blob_name FROM dicom_instances i",
        );
        self.push_scope(&mut select, service, scope)?;
        select.push(" ORDER BY i.series_id, i.id");
        let mut transaction = self.database.begin_write().await?;
        let rows = select.query().fetch_all(&mut *transaction).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut instance_ids = Vec::with_capacity(rows.len());
        let mut blob_names = Vec::with_capacity(rows.len());
        let mut series_ids = BTreeSet::new();
        let mut study_ids = BTreeSet::new();
        let mut deleted = Vec::with_capacity(rows.len());
        for row in &rows {
            instance_ids.push(column::<i64>(row, 0)?);
            blob_names.push(column::<String>(row, 1)?);
            // An updated instance's original version goes with it.
            if let Some(original) = column::<Option<String>>(row, 6)? {
                blob_names.push(original);
            }
            series_ids.insert(column::<i64>(row, 2)?);
            study_ids.insert(column::<i64>(row, 3)?);
            deleted.push((column::<Vec<u8>>(row, 4)?, column::<Vec<u8>>(row, 5)?));
        }
        // Tokens go with their rows (ON DELETE CASCADE).
        for chunk in instance_ids.chunks(TOKENS_PER_INSERT) {
            let mut delete = Sql::new("DELETE FROM dicom_instances WHERE id IN ");
            delete.bind_list(chunk.iter().map(|id| Argument::Integer(*id)));
            delete.query().execute(&mut *transaction).await?;
        }
        let mut delete_series = Sql::new("DELETE FROM dicom_series WHERE id IN ");
        delete_series
            .bind_list(series_ids.iter().map(|id| Argument::Integer(*id)))
            .push(" AND NOT EXISTS (SELECT 1 FROM dicom_instances i WHERE i.series_id = dicom_series.id)")
            .push(" RETURNING study_id");
        let emptied = delete_series.query().fetch_all(&mut *transaction).await?;
        // A study that lost a series may have lost a modality: its ModalitiesInStudy is read
        // from its series again (`summary.rs`). (A study left empty is deleted just below.)
        let lost_series = emptied
            .iter()
            .map(|row| column::<i64>(row, 0))
            .collect::<Result<BTreeSet<_>, _>>()?;
        crate::summary::forget_modalities(&mut transaction, lost_series).await?;
        let mut delete_studies = Sql::new("DELETE FROM dicom_studies WHERE id IN ");
        delete_studies
            .bind_list(study_ids.iter().map(|id| Argument::Integer(*id)))
            .push(" AND NOT EXISTS (SELECT 1 FROM dicom_series se WHERE se.study_id = dicom_studies.id)")
            .push(" RETURNING uid_token");
        let deleted_studies = delete_studies.query().fetch_all(&mut *transaction).await?;
        // Crypto-shredding: a study that is gone takes its key with it, in the same commit, so
        // its blobs (deleted only after the commit, and any copy of them) never open again.
        for study in &deleted_studies {
            let study_token: Vec<u8> = column(study, 0)?;
            sqlx::query("DELETE FROM dicom_study_keys WHERE service = $1 AND study_token = $2")
                .bind(service)
                .bind(study_token.as_slice())
                .execute(&mut *transaction)
                .await?;
        }
        // The change feed, in the same commit: every entry of a deleted instance says so, and
        // a delete entry per instance (keeping its sealed UIDs, so a copy can follow) comes last.
        let sop_tokens: Vec<&[u8]> = deleted.iter().map(|(token, _)| token.as_slice()).collect();
        changefeed::mark(&mut transaction, service, &sop_tokens, ChangeState::Deleted).await?;
        let changes: Vec<(&str, NewChange<'_>)> = deleted
            .iter()
            .map(|(sop_token, uids)| {
                (
                    service,
                    NewChange {
                        action: ChangeAction::Delete,
                        sop_token,
                        uids,
                    },
                )
            })
            .collect();
        changefeed::append(&mut transaction, &changes).await?;
        transaction.commit().await?;
        Ok(blob_names)
    }

    /// Appends the joins and conditions selecting the instances (alias `i`) in scope.
    fn push_scope<'a>(
        &self,
        sql: &mut Sql<'a>,
        service: &'a str,
        scope: DeleteScope<'_>,
    ) -> Result<(), IndexError> {
        let cipher = self.cipher.as_ref();
        let (study, series, sop) = match scope {
            DeleteScope::Study(study) => (study, None, None),
            DeleteScope::Series(study, series) => (study, Some(series), None),
            DeleteScope::Instance(study, series, sop) => (study, Some(series), Some(sop)),
        };
        sql.push(" JOIN dicom_studies st ON st.id = i.study_id");
        if series.is_some() {
            sql.push(" JOIN dicom_series se ON se.id = i.series_id");
        }
        sql.push(" WHERE i.service = ")
            .bind(Argument::Text(service.into()))
            .push(" AND st.uid_token = ")
            .bind(Argument::Bytes(
                cipher.token(service, STUDY_UID, study)?.into(),
            ));
        if let Some(series) = series {
            sql.push(" AND se.uid_token = ").bind(Argument::Bytes(
                cipher.token(service, SERIES_UID, series)?.into(),
            ));
        }
        if let Some(sop) = sop {
            sql.push(" AND i.uid_token = ")
                .bind(Argument::Bytes(cipher.token(service, SOP_UID, sop)?.into()));
        }
        Ok(())
    }

    /// Opens a sealed value of a row.
    pub(crate) fn open_sealed(
        &self,
        service: &str,
        table: &'static str,
        row_token: &[u8],
        column: &'static str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, IndexError> {
        self.cipher.open(
            RowBinding {
                service,
                table,
                row_token,
                column,
            },
            sealed,
        )
    }
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, IndexError> {
    serde_json::to_vec(value)
        .map_err(|error| IndexError::Corrupt(format!("cannot encode an index value: {error}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, IndexError> {
    // Only the error's category: its text could quote the value.
    serde_json::from_slice(bytes).map_err(|error| {
        let category = match error.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "unexpected shape",
            serde_json::error::Category::Eof => "truncated",
        };
        IndexError::Corrupt(format!("cannot decode an index value ({category})"))
    })
}
