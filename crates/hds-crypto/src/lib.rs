//! Envelope encryption for hds.
#![deny(missing_docs)]

pub mod root;
