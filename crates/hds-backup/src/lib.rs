//! Recovery of an hds data dir: what keeps it free of leftovers, and what copies it elsewhere
//! and back.
//!
//! - [`sweep`]: a background sweeper that removes blobs no index row references (left by a
//!   crash between a blob's write and its index commit, or by a delete interrupted after its
//!   commit) once they are older than a grace period, and study keys left without a study.
//! - [`backup`]: an online, consistent backup of a SQLite-backed data dir (the database by
//!   `VACUUM INTO`, then the blobs its snapshot references) with the root key sealed under an
//!   operator's passphrase, and its restore into a new data dir.
//!
//! Architecture invariants:
//! - This crate reads two columns of the index's tables and nothing else of them: blob names
//!   (`dicom_instances.blob_name`, random names that carry no patient data) and which study
//!   tokens have studies. It never opens a sealed value.
//! - The raw root key never leaves `hds-crypto`: a backup holds only its passphrase-sealed form.
#![deny(missing_docs)]

pub mod backup;
pub mod sweep;

pub use backup::{
    BackupError, BackupReport, BackupSource, RestoreReport, backup, restore, restore_into,
};
pub use sweep::{SweepError, SweepReport, Sweeper};
