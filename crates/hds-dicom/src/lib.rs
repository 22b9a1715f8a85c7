//! DICOM over dicom-rs: parse and validate one instance, extract what the index needs,
//! render DICOM JSON (PS3.18 F) without bulk data, and locate frames.
//!
//! This crate knows nothing about HTTP, storage or encryption. Everything it returns that came
//! from an instance may be PHI: callers must not log it.
#![deny(missing_docs)]

pub mod attributes;
pub mod extended;
pub mod frames;
pub mod instance;
pub mod normalize;
mod unknown_vr;
pub mod update;
pub mod workitem;

pub use attributes::{QueryLevel, SearchKind, SearchableAttribute};
pub use frames::{ByteRange, FrameMap};
pub use instance::{
    DicomJsonText, InstanceError, ParsedInstance, SearchTerm, SearchValue, json_array,
    parse_instance,
};
