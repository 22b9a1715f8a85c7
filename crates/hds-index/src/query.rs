//! QIDO-RS searches.

use hds_dicom::{QueryLevel, SearchableAttribute};

use crate::{Index, IndexError};

/// How one filter matches.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The normalized value equals this.
    Exact(String),
    /// Person name: some name-part word starts with each of these normalized prefixes.
    FuzzyName(Vec<String>),
    /// A date (`YYYYMMDD`) within the inclusive bounds; either may be open.
    DateRange(Option<u32>, Option<u32>),
}

/// One attribute filter.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The attribute.
    pub attribute: &'static SearchableAttribute,
    /// The match.
    pub matcher: Matcher,
}

/// A QIDO-RS search.
#[derive(Debug, Clone)]
pub struct SearchQuery<'a> {
    /// The DICOM service.
    pub service: &'a str,
    /// The level of the results.
    pub level: QueryLevel,
    /// Restrict to a study (series and instance searches under `studies/{study}`).
    pub study_instance_uid: Option<&'a str>,
    /// Restrict to a series (instance searches under `.../series/{series}`).
    pub series_instance_uid: Option<&'a str>,
    /// All filters must match; a filter on an attribute of a higher level matches the parent
    /// (e.g. PatientName in a series search filters by the series' study).
    pub filters: Vec<Filter>,
    /// At most this many results.
    pub limit: u32,
    /// Skip this many.
    pub offset: u32,
}

/// One result: the level's stored attributes (DICOM JSON object, plus those of the higher
/// levels), and the counts QIDO-RS reports.
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// Attributes of the result and of its parents (DICOM JSON object keyed by tag).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// NumberOfStudyRelatedSeries, or None below study level.
    pub number_of_related_series: Option<u64>,
    /// NumberOfStudyRelatedInstances / NumberOfSeriesRelatedInstances.
    pub number_of_related_instances: Option<u64>,
    /// ModalitiesInStudy (distinct, study level only).
    pub modalities_in_study: Vec<String>,
}

impl Index {
    /// Runs a search; results in store order.
    pub async fn search(&self, query: &SearchQuery<'_>) -> Result<Vec<SearchHit>, IndexError> {
        let _ = query;
        todo!()
    }
}
