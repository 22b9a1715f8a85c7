//! The client side of `hds`: commands modelled on `az` that talk to an hds endpoint over HTTP.

pub mod account;
pub mod arm;
pub mod control;
pub mod credentials;
pub mod dicom;
pub mod output;
