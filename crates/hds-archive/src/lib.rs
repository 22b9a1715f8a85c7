//! The DICOM archive of hds: what one DICOM service's data operations are, over the index (rows,
//! tokens, sealed values), the service's keyring (root, study and blob keys) and the blob store
//! (sealed instance bytes). One call per operation: store or replace an instance, open instances
//! or frames for retrieval, read metadata, search, delete, read the change feed, manage
//! extended query tags and read operations, and the UPS-RS workitem transactions (`workitems.rs`).
//! Each call owns
//! its key protocol, its retries and its cleanup, so a caller (the DICOMweb API) only extracts a
//! request, calls and renders.
//!
//! Architecture invariants:
//! - An instance is stored only after its blob is complete and its index row committed; a
//!   failure in between leaves at most an unreferenced blob (removed here, or by the sweeper),
//!   never a visible half instance.
//! - Every blob is sealed under its own blob key, wrapped by its study's key and bound to the
//!   instance it belongs to: a row that names another instance's blob is refused on read.
//! - Reads stream: a retrieval holds one open blob and about one segment (or one frame) in
//!   memory however many instances (or frames) it covers.
#![deny(missing_docs)]

mod chunk_reader;
mod error;
mod export;
mod extended;
mod read;
mod store;
mod sync_reader;
mod update;
mod workitems;

use std::sync::Arc;

use hds_blob::BlobStore;
use hds_index::{Index, ServiceKeyring};

pub use error::ArchiveError;
pub use export::{
    ExportDestination, ExportIdentifier, ExportPolicy, ExportRefusal, ExportRequest, ExportStep,
    ExportSummary, ExportWorker, MAX_EXPORT_IDENTIFIERS, parse_export_request,
};
pub use hds_dicom::QueryLevel;
/// Which instances a retrieve or delete addresses: a study, a series of it, or one instance.
pub use hds_index::DeleteScope as Scope;
pub use hds_index::{
    AddTagsOutcome, ChangeAction, ChangeFeedEntry, ChangeFeedWindow, ChangeState, ExtendedFilter,
    ExtendedQueryTag, Filter, Matcher, Operation, OperationStatus, RawAttributes, SearchHit,
    StartUpdate, StoreMode, TagChange, TagError, TagQueryStatus, TagStatus, UpdateInput,
    UpdateResults,
};
pub use hds_index::{DEFAULT_PARTITION, Partition, PartitionNameError, check_partition_name};
pub use read::{ByteStream, FoundFrames, FoundInstance, FoundInstances, InstanceContent};
pub use store::{Refusal, RefusalReason, StoreOutcome, StoredInstance};
pub use update::{StudyUpdate, spawn_update_worker};
pub use workitems::WorkitemResult;

/// The archive of every DICOM service of this hds: the index and the blob store they share.
/// Cheap to clone.
#[derive(Clone)]
pub struct Archive {
    index: Index,
    blobs: BlobStore,
}

impl Archive {
    /// The archive over `index` and `blobs`.
    pub fn new(index: Index, blobs: BlobStore) -> Archive {
        Archive { index, blobs }
    }

    /// The archive of one service: `service` is the internal key its index rows and blob
    /// bindings are filed under, `keyring` its keys (opened for that same key).
    pub fn service(&self, service: &str, keyring: Arc<ServiceKeyring>) -> ServiceArchive {
        ServiceArchive {
            index: self.index.clone(),
            blobs: self.blobs.clone(),
            service: service.to_owned(),
            keyring,
        }
    }
}

/// One DICOM service's archive: the operations on its data. Cheap to clone.
#[derive(Clone)]
pub struct ServiceArchive {
    index: Index,
    blobs: BlobStore,
    service: String,
    keyring: Arc<ServiceKeyring>,
}

impl ServiceArchive {
    /// Whether the service's keys are in memory. When not (access to its customer-managed key
    /// was lost), its data can be neither read nor written.
    pub fn is_unlocked(&self) -> bool {
        self.keyring.is_unlocked()
    }

    /// The archive of this service's data partition `name` (the service's own for
    /// [`DEFAULT_PARTITION`]): every operation then sees and changes only that partition's
    /// data, under the same key hierarchy. The caller checked the name
    /// ([`check_partition_name`]) and that the partition exists or may be created
    /// ([`ServiceArchive::partition_or_add`]).
    pub fn partition(&self, name: &str) -> ServiceArchive {
        let keyring = self.keyring.partition(name);
        ServiceArchive {
            index: self.index.clone(),
            blobs: self.blobs.clone(),
            service: keyring.scope().to_owned(),
            keyring,
        }
    }

    /// The data partitions of the service, the default first.
    pub async fn partitions(&self) -> Result<Vec<Partition>, ArchiveError> {
        Ok(self.index.partitions(self.keyring.service()).await?)
    }

    /// The service's partition `name`, if it exists (the default always does).
    pub async fn find_partition(&self, name: &str) -> Result<Option<Partition>, ArchiveError> {
        Ok(self.index.partition(self.keyring.service(), name).await?)
    }

    /// The service's partition `name`, created if new: a store creates its partition, as in
    /// Azure.
    pub async fn partition_or_add(&self, name: &str) -> Result<Partition, ArchiveError> {
        Ok(self
            .index
            .partition_or_add(self.keyring.service(), name)
            .await?)
    }
}

/// A search of a service's studies, series or instances (QIDO-RS), its values already
/// normalized as the index matches them.
#[derive(Debug, Clone)]
pub struct Search<'a> {
    /// What the results are.
    pub level: QueryLevel,
    /// Only within this study.
    pub study_instance_uid: Option<&'a str>,
    /// Only within this series (of `study_instance_uid`).
    pub series_instance_uid: Option<&'a str>,
    /// Conditions every result meets.
    pub filters: Vec<Filter>,
    /// Conditions on extended query tags (checked ready and enabled by the caller).
    pub extended_filters: Vec<ExtendedFilter>,
    /// At most this many results.
    pub limit: u32,
    /// Skipping this many first.
    pub offset: u32,
}

impl ServiceArchive {
    /// The results of `search`, with their stored attributes.
    pub async fn search(&self, search: Search<'_>) -> Result<Vec<SearchHit>, ArchiveError> {
        let query = hds_index::SearchQuery {
            service: &self.service,
            level: search.level,
            study_instance_uid: search.study_instance_uid,
            series_instance_uid: search.series_instance_uid,
            filters: search.filters,
            extended_filters: search.extended_filters,
            limit: search.limit,
            offset: search.offset,
        };
        Ok(self.index.search(&query).await?)
    }

    /// The entries of the service's change feed in `window`, in sequence order; with the
    /// metadata of entries whose version is still the stored one when `include_metadata`.
    pub async fn change_feed(
        &self,
        window: ChangeFeedWindow,
        include_metadata: bool,
    ) -> Result<Vec<ChangeFeedEntry>, ArchiveError> {
        Ok(self
            .index
            .change_feed(&self.service, window, include_metadata)
            .await?)
    }

    /// The latest entry of the service's change feed, or `None` when nothing changed yet.
    pub async fn latest_change(
        &self,
        include_metadata: bool,
    ) -> Result<Option<ChangeFeedEntry>, ArchiveError> {
        Ok(self
            .index
            .latest_change(&self.service, include_metadata)
            .await?)
    }

    /// Deletes the instances in `scope`: their index rows first, in one transaction (a study
    /// left empty loses its key in the same commit, so a lingering copy of its blobs cannot be
    /// decrypted), then their blobs. Not found (naming the scope's level) when there are none.
    ///
    /// The data stops being visible when the rows go. Every blob is then tried even if one
    /// fails to go; a failure is returned after the others were tried, and whatever stayed is
    /// unreferenced, so the sweeper removes it.
    pub async fn delete(&self, scope: Scope<'_>) -> Result<(), ArchiveError> {
        let blob_names = self.index.delete(&self.service, scope).await?;
        if blob_names.is_empty() {
            return Err(ArchiveError::NotFound(read::level_name(scope)));
        }
        let mut first_failure = None;
        for name in blob_names {
            let deleted = match hds_blob::BlobName::parse(&name) {
                Ok(name) => self.blobs.delete(&name).await,
                Err(error) => Err(error),
            };
            if let Err(error) = deleted {
                tracing::warn!(error = %error, "removing a deleted instance's blob failed");
                first_failure.get_or_insert(error);
            }
        }
        match first_failure {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}
