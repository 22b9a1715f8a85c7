//! The DICOM index: which studies, series and instances a DICOM service holds, where their
//! blobs are, and the search terms QIDO-RS matches on. One sqlx code path serves SQLite (the
//! default, a file in the data dir) and PostgreSQL.
//!
//! Architecture invariant: the index never needs plaintext values to match. Every value that
//! came from an instance goes through an [`IndexCipher`]: UIDs and search values are stored as
//! tokens (equality only), returned attributes as sealed bytes bound to their row. The
//! [`PlaintextIndexCipher`] keeps them readable; the encrypting cipher swaps in keyed tokens and
//! AEAD without touching the queries.
#![deny(missing_docs)]

mod cipher;
mod error;
mod index;
mod query;
mod sql;
mod tokens;

pub use cipher::{IndexCipher, PlaintextIndexCipher, RowBinding};
pub use error::IndexError;
pub use index::{DeleteScope, Index, InstanceRecord, NewInstance, StoreOutcome};
pub use query::{Filter, Matcher, SearchHit, SearchQuery};
