//! Parsing and validating one Part-10 instance.

use std::io::{Read, Seek};

use crate::attributes::{QueryLevel, SearchableAttribute};
use crate::frames::FrameMap;

/// Why an instance was refused. The messages name the problem but never echo values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    /// Not a readable Part-10 file.
    #[error("not a valid DICOM Part-10 instance: {0}")]
    Unreadable(String),
    /// A required attribute is missing or empty.
    #[error("required attribute {0} is missing")]
    MissingAttribute(&'static str),
    /// A UID attribute is not 1-64 characters of digits and dots.
    #[error("attribute {0} is not a valid UID")]
    InvalidUid(&'static str),
}

/// A searchable value of one instance, already normalized (see [`crate::normalize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchValue {
    /// Exact-match value (trailing/leading padding stripped).
    Exact(String),
    /// A person name: the exact normalized full value, and the normalized name-part words
    /// (lowercase, accents removed) whose prefixes fuzzy matching uses.
    PersonName {
        /// The whole value, padding stripped.
        exact: String,
        /// Lowercase accent-free words of all name parts.
        words: Vec<String>,
    },
    /// A date as `YYYYMMDD`.
    Date(u32),
}

/// One searchable attribute value of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTerm {
    /// Which attribute.
    pub attribute: &'static SearchableAttribute,
    /// Its value; an attribute with several values (e.g. ModalitiesInStudy) yields several terms.
    pub value: SearchValue,
}

/// What ingest learns from one instance.
#[derive(Debug, Clone)]
pub struct ParsedInstance {
    /// StudyInstanceUID (0020,000D), validated, padding stripped.
    pub study_instance_uid: String,
    /// SeriesInstanceUID (0020,000E).
    pub series_instance_uid: String,
    /// SOPInstanceUID (0008,0018).
    pub sop_instance_uid: String,
    /// SOPClassUID (0008,0016).
    pub sop_class_uid: String,
    /// TransferSyntaxUID from the file meta group.
    pub transfer_syntax_uid: String,
    /// Study- and patient-level attributes as a DICOM JSON object (keys are 8-hex tags).
    pub study_attributes: serde_json::Map<String, serde_json::Value>,
    /// Series-level attributes as a DICOM JSON object.
    pub series_attributes: serde_json::Map<String, serde_json::Value>,
    /// Instance-level attributes as a DICOM JSON object.
    pub instance_attributes: serde_json::Map<String, serde_json::Value>,
    /// The whole data set as DICOM JSON, bulk data (pixel data and other large binary values)
    /// left out.
    pub metadata: serde_json::Value,
    /// The searchable values, at their levels.
    pub search_terms: Vec<SearchTerm>,
    /// Where the frames are, when the instance has pixel data.
    pub frames: Option<FrameMap>,
}

impl ParsedInstance {
    /// The search terms at one level.
    pub fn terms_at(&self, level: QueryLevel) -> impl Iterator<Item = &SearchTerm> {
        self.search_terms.iter().filter(move |term| term.attribute.level == level)
    }
}

/// Parses one Part-10 instance (preamble and meta group included) from a reader positioned at
/// its start, without reading pixel data into memory: large instances are parsed from a file.
pub fn parse_instance<R: Read + Seek>(reader: R) -> Result<ParsedInstance, InstanceError> {
    let _ = reader;
    todo!()
}
