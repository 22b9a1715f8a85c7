//! DICOM events: the dispatcher's view of the DICOM services (`hds_events::ChangeSource`)
//! over the DICOM host (which services a workspace has, their keys, whether their key access
//! is lost) and the archive (their change feeds, opened with those keys).

use std::sync::Arc;

use futures::future::BoxFuture;
use hds_archive::{Archive, ArchiveError, ChangeAction, ChangeFeedEntry, ChangeFeedWindow};
use hds_dicom_service::{DicomHost, ServedService};
use hds_events::{Change, ChangeKind, ChangeSource, SourceError, SourceService};

/// The change feeds of the services this hds serves.
pub struct HostChangeSource {
    pub host: Arc<DicomHost>,
    pub archive: Archive,
}

impl HostChangeSource {
    /// The archive of the served service `service`, if its keys are in memory and its key
    /// access is not lost.
    fn archive_of(&self, service: &str) -> Result<hds_archive::ServiceArchive, SourceError> {
        let served = self
            .host
            .served(service)
            .ok_or_else(|| SourceError::Failed("the DICOM service is no longer served".into()))?;
        if served.key_access_lost || !served.keyring.is_unlocked() {
            return Err(SourceError::KeysUnavailable);
        }
        Ok(self.archive.service(&served.service_key, served.keyring))
    }
}

/// `serviceHostName`: the service URL without its scheme (hds serves services under paths).
fn host_name(served: &ServedService) -> String {
    let url = served.service_url.as_str();
    url.split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_owned()
}

fn source_error(error: ArchiveError) -> SourceError {
    match error {
        ArchiveError::KeyAccessLost => SourceError::KeysUnavailable,
        // Index errors name no instance value.
        other => SourceError::Failed(other.to_string()),
    }
}

fn change(entry: ChangeFeedEntry) -> Change {
    Change {
        sequence: entry.sequence,
        timestamp_micros: entry.timestamp_micros,
        kind: match entry.action {
            ChangeAction::Create => ChangeKind::Created,
            ChangeAction::Delete => ChangeKind::Deleted,
            ChangeAction::Update => ChangeKind::Updated,
        },
        study_instance_uid: entry.study_instance_uid,
        series_instance_uid: entry.series_instance_uid,
        sop_instance_uid: entry.sop_instance_uid,
        partition_name: entry.partition_name,
    }
}

impl ChangeSource for HostChangeSource {
    fn services<'a>(
        &'a self,
        workspace_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SourceService>, SourceError>> {
        Box::pin(async move {
            Ok(self
                .host
                .services_in_workspace(workspace_id)
                .iter()
                .map(|served| SourceService {
                    service: served.service_key.clone(),
                    host_name: host_name(served),
                    available: !served.key_access_lost && served.keyring.is_unlocked(),
                })
                .collect())
        })
    }

    fn changes_after<'a>(
        &'a self,
        service: &'a str,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Change>, SourceError>> {
        Box::pin(async move {
            let archive = self.archive_of(service)?;
            // Sequences are dense within a service, so a window of `limit` holds at most that.
            let entries = archive
                .change_feed(
                    ChangeFeedWindow::Sequences {
                        after,
                        through: after.saturating_add(limit.max(1)),
                    },
                    false,
                )
                .await
                .map_err(source_error)?;
            Ok(entries.into_iter().map(change).collect())
        })
    }

    fn latest_sequence<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<i64, SourceError>> {
        Box::pin(async move {
            let archive = self.archive_of(service)?;
            Ok(archive
                .latest_change(false)
                .await
                .map_err(source_error)?
                .map(|entry| entry.sequence)
                .unwrap_or(0))
        })
    }

    fn first_since<'a>(
        &'a self,
        service: &'a str,
        since_micros: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, SourceError>> {
        Box::pin(async move {
            let archive = self.archive_of(service)?;
            let entries = archive
                .change_feed(
                    ChangeFeedWindow::Time {
                        start_micros: since_micros,
                        end_micros: i64::MAX,
                        offset: 0,
                        limit: 1,
                    },
                    false,
                )
                .await
                .map_err(source_error)?;
            Ok(entries.first().map(|entry| entry.sequence))
        })
    }
}
