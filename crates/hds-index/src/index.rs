//! Storing, finding and deleting instances.

use std::sync::Arc;

use hds_dicom::{FrameMap, ParsedInstance};

use crate::{IndexCipher, IndexError};

/// The index of all DICOM services of this hds, over one database. Cheap to clone.
#[derive(Clone)]
pub struct Index {
    _private: (),
    _cipher: Option<Arc<dyn IndexCipher>>,
}

/// An instance to record, after its blob was written.
pub struct NewInstance<'a> {
    /// The DICOM service, e.g. `default/dicom`.
    pub service: &'a str,
    /// What parsing found.
    pub parsed: &'a ParsedInstance,
    /// The opaque name of the blob holding the instance's bytes.
    pub blob_name: &'a str,
    /// The blob's length in bytes.
    pub size: u64,
}

/// What storing an instance did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Recorded; it is now visible.
    Stored,
    /// An instance with this SOPInstanceUID already exists in the service; nothing changed
    /// (the caller deletes the blob it wrote).
    AlreadyExists,
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
}

impl Index {
    /// Opens (creating if needed) the index at `url` (`sqlite:PATH` or `postgres://...`) and
    /// runs its migrations.
    pub async fn connect(url: &str, cipher: Arc<dyn IndexCipher>) -> Result<Index, IndexError> {
        let _ = (url, cipher);
        todo!()
    }

    /// Records an instance and its study and series, atomically. Of concurrent stores of the
    /// same SOPInstanceUID exactly one gets [`StoreOutcome::Stored`].
    pub async fn store_instance(&self, instance: NewInstance<'_>) -> Result<StoreOutcome, IndexError> {
        let _ = instance;
        todo!()
    }

    /// The instances in scope, ordered by series then instance (store order); empty if none.
    pub async fn find_instances(&self, service: &str, scope: DeleteScope<'_>) -> Result<Vec<InstanceRecord>, IndexError> {
        let _ = (service, scope);
        todo!()
    }

    /// The metadata (DICOM JSON, bulk data left out) of the instances in scope, same order.
    pub async fn find_metadata(&self, service: &str, scope: DeleteScope<'_>) -> Result<Vec<serde_json::Value>, IndexError> {
        let _ = (service, scope);
        todo!()
    }

    /// Removes the instances in scope (and studies/series left empty) atomically, returning the
    /// blob names the caller must delete; empty if nothing matched.
    pub async fn delete(&self, service: &str, scope: DeleteScope<'_>) -> Result<Vec<String>, IndexError> {
        let _ = (service, scope);
        todo!()
    }
}
