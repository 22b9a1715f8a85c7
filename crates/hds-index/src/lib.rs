//! The DICOM index: which studies, series and instances a DICOM service holds, where their
//! blobs are, and the search terms QIDO-RS matches on. One sqlx code path serves SQLite (the
//! default, a file in the data dir) and PostgreSQL.
//!
//! Architecture invariant: the index never needs plaintext values to match. Every value that
//! came from an instance goes through an [`IndexCipher`]: UIDs and search values are stored as
//! tokens (equality only), returned attributes as sealed bytes bound to their row. The
//! [`PlaintextIndexCipher`] keeps them readable (tests only); [`ServiceKeyrings`] makes tokens
//! HMACs and values AES-256-GCM under each service's index keys, without touching the queries.
//!
//! The index also keeps each service's key hierarchy ([`ServiceKeyring`]): the root key wrapped
//! by the service's KEK, study keys wrapped by the root key, and each instance's blob key
//! wrapped by its study key. Deleting a study destroys its key in the same commit.
//!
//! Every create, replacement and delete also appends to the service's change feed in the same
//! transaction (`changefeed.rs`), numbered in commit order.
//!
//! Extended query tags (`extended.rs`) are searched like the defaults, through tokens under a
//! per-tag random domain; adding one starts a reindex operation (`reindex.rs`) whose progress is
//! a cursor in the database, so any process holding its lease continues it.
//!
//! Data partitions (`partitions.rs`) are scopes inside a service: their rows carry the
//! partition's scope where others carry the service, under index keys derived for the
//! partition.
//!
//! UPS workitems (`workitems.rs`) are rows of their own: the dataset and the owner's Transaction
//! UID sealed, the search values as tokens, and a version that makes every write conditional on
//! what its caller read.
#![deny(missing_docs)]

mod changefeed;
mod cipher;
mod error;
mod export;
mod extended;
mod index;
mod keyring;
mod partitions;
mod query;
mod reindex;
mod sql;
mod store;
mod summary;
mod tokens;
mod update;
mod workitems;

pub use changefeed::{ChangeAction, ChangeFeedEntry, ChangeFeedWindow, ChangeState};
pub use cipher::{IndexCipher, PlaintextIndexCipher, RowBinding};
pub use error::IndexError;
pub use export::{ExportAdvance, ExportRecord, ExportResults};
pub use extended::{
    AddTagsOutcome, ExtendedQueryTag, TagChange, TagError, TagQueryStatus, TagStatus,
};
pub use hds_crypto::keys::InstanceBinding;
pub use index::{
    DeleteScope, Index, InstanceRecord, NewInstance, SealedInstance, StoreMode, StoreOutcome,
};
pub use keyring::{
    InstanceKeys, KeyringError, ServiceKeyring, ServiceKeyrings, StoredBlobKey, StudyKeyLease,
    platform_kek, stored_key_id,
};
pub(crate) use partitions::split_scope;
pub use partitions::{
    DEFAULT_PARTITION, MAX_PARTITION_NAME_LEN, MAX_PARTITIONS, Partition, PartitionNameError,
    check_partition_name, partition_scope,
};
pub use query::{ExtendedFilter, Filter, Matcher, RawAttributes, SearchHit, SearchQuery};
pub use reindex::{Operation, OperationStatus, ReindexStep};
pub use store::CommitGate;
pub use update::{ClaimedUpdate, StartUpdate, UpdateInput, UpdateResults};
pub use workitems::{StoredWorkitem, WorkitemFilter, WorkitemRecord};
