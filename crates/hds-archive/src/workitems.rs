//! A service's UPS workitems: one call per UPS-RS transaction. The UPS rules are
//! `hds_dicom::workitem`'s, the rows the index's; each call reads the workitem, decides, and
//! writes only if nothing changed it meanwhile (reading again and deciding again otherwise), so
//! concurrent transactions on one workitem behave as if they ran one after the other.

use std::time::{SystemTime, UNIX_EPOCH};

use hds_dicom::workitem::{
    Dataset, Projection, Refusal, StateChange, StateOutcome, Workitem, apply_update, change_state,
    prepare_create, request_cancel, search_terms,
};
use hds_index::{StoredWorkitem, WorkitemFilter, WorkitemRecord};

use crate::{ArchiveError, ServiceArchive};

/// How often a transaction decides again when another write changed the workitem between its
/// read and its write, before it answers 409.
const ATTEMPTS: usize = 4;

/// What a workitem transaction did: done (with a warning for the client, PS3.18's `Warning`
/// header), or refused for a reason the client can act on.
pub type WorkitemResult = Result<Option<String>, Refusal>;

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn opened(stored: StoredWorkitem) -> Result<(Workitem, i64), ArchiveError> {
    let dataset = Dataset::from_stored(&stored.dataset)
        .ok_or_else(|| ArchiveError::Integrity("a workitem's dataset does not read".into()))?;
    Ok((
        Workitem {
            dataset,
            transaction_uid: stored.transaction_uid,
        },
        stored.version,
    ))
}

impl ServiceArchive {
    /// Creates a workitem (Create, PS3.18 11.4): its UID from the URI or the dataset, checked
    /// against PS3.4's requirements, SCHEDULED. `Ok(Ok(uid))` when created.
    pub async fn create_workitem(
        &self,
        dataset: Dataset,
        uid_in_uri: Option<&str>,
    ) -> Result<Result<String, Refusal>, ArchiveError> {
        if !self.is_unlocked() {
            return Err(ArchiveError::KeyAccessLost);
        }
        let workitem = match prepare_create(dataset, uid_in_uri, now_micros()) {
            Ok(workitem) => workitem,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let Some(uid) = workitem.uid() else {
            return Ok(Err(Refusal::invalid("the workitem has no SOPInstanceUID")));
        };
        let json = workitem.dataset.to_json();
        let terms = search_terms(&workitem.dataset);
        let record = WorkitemRecord {
            uid: &uid,
            dataset: &json,
            transaction_uid: None,
            terms: &terms,
        };
        if self.index.create_workitem(&self.service, &record).await? {
            Ok(Ok(uid))
        } else {
            Ok(Err(Refusal::conflict(
                "a workitem with this UID already exists",
            )))
        }
    }

    /// The workitem of this UID (Retrieve, PS3.18 11.5), without its Transaction UID (which
    /// the dataset never holds); `None` when there is none.
    pub async fn workitem(&self, uid: &str) -> Result<Option<Dataset>, ArchiveError> {
        if !self.is_unlocked() {
            return Err(ArchiveError::KeyAccessLost);
        }
        match self.index.workitem(&self.service, uid).await? {
            Some(stored) => Ok(Some(opened(stored)?.0.dataset)),
            None => Ok(None),
        }
    }

    /// Updates a workitem (Update, PS3.18 11.6) with the Transaction UID the URI gave.
    pub async fn update_workitem(
        &self,
        uid: &str,
        changes: Dataset,
        transaction_uid: Option<&str>,
    ) -> Result<WorkitemResult, ArchiveError> {
        self.modify_workitem(uid, |current, now| {
            apply_update(current, changes.clone(), transaction_uid, now).map(StateOutcome::Changed)
        })
        .await
    }

    /// Changes a workitem's state (Change State, PS3.18 11.7): claim, complete or cancel.
    pub async fn change_workitem_state(
        &self,
        uid: &str,
        change: &StateChange,
    ) -> Result<WorkitemResult, ArchiveError> {
        self.modify_workitem(uid, |current, now| change_state(current, change, now))
            .await
    }

    /// Requests a workitem's cancellation (Request Cancellation, PS3.18 11.8): a SCHEDULED one
    /// is canceled.
    pub async fn request_workitem_cancel(
        &self,
        uid: &str,
        request: &Dataset,
    ) -> Result<WorkitemResult, ArchiveError> {
        self.modify_workitem(uid, |current, now| request_cancel(current, request, now))
            .await
    }

    /// The workitems meeting every filter (Search, PS3.18 11.9), newest first, each projected.
    pub async fn search_workitems(
        &self,
        filters: &[WorkitemFilter],
        projection: &Projection,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, ArchiveError> {
        if !self.is_unlocked() {
            return Err(ArchiveError::KeyAccessLost);
        }
        let found = self
            .index
            .search_workitems(&self.service, filters, limit, offset)
            .await?;
        found
            .iter()
            .map(|bytes| {
                Dataset::from_stored(bytes)
                    .map(|dataset| projection.apply(&dataset))
                    .ok_or_else(|| {
                        ArchiveError::Integrity("a workitem's dataset does not read".into())
                    })
            })
            .collect()
    }

    /// Reads the workitem, lets `decide` rule, writes the result if the workitem did not change
    /// meanwhile; otherwise reads and decides again, up to [`ATTEMPTS`] times.
    async fn modify_workitem(
        &self,
        uid: &str,
        decide: impl Fn(&Workitem, i64) -> Result<StateOutcome, Refusal>,
    ) -> Result<WorkitemResult, ArchiveError> {
        if !self.is_unlocked() {
            return Err(ArchiveError::KeyAccessLost);
        }
        for _ in 0..ATTEMPTS {
            let Some(stored) = self.index.workitem(&self.service, uid).await? else {
                return Ok(Err(Refusal::not_found()));
            };
            let (current, version) = opened(stored)?;
            let next = match decide(&current, now_micros()) {
                Err(refusal) => return Ok(Err(refusal)),
                Ok(StateOutcome::Unchanged(warning)) => return Ok(Ok(Some(warning))),
                Ok(StateOutcome::Changed(next)) => next,
            };
            let json = next.dataset.to_json();
            let terms = search_terms(&next.dataset);
            let record = WorkitemRecord {
                uid,
                dataset: &json,
                transaction_uid: next.transaction_uid.as_deref(),
                terms: &terms,
            };
            if self
                .index
                .replace_workitem(&self.service, version, &record)
                .await?
            {
                return Ok(Ok(None));
            }
        }
        Ok(Err(Refusal::conflict(
            "the workitem kept changing while this request was applied; try again",
        )))
    }
}
