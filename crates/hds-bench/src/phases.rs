//! The phases: a bounded closed loop of `concurrency` workers, each issuing
//! one request at a time until the request budget or the time budget is spent.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use time::Duration as DateOffset;

use crate::client::{DicomWebClient, RequestFailure, Transfer};
use crate::corpus::{Corpus, format_dicom_date};
use crate::multipart;
use crate::stats::{Observations, PhaseReport};

/// A phase that can be selected with `--phases`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// STOW-RS of the whole corpus.
    Stow,
    /// WADO-RS retrieval of single instances.
    Wado,
    /// WADO-RS metadata.
    Metadata,
    /// QIDO-RS study searches, by PatientID and by a StudyDate range.
    Qido,
    /// GET of the paths listed in `--paths`, in turn, with `--accept`: any
    /// resource of data stored beforehand (rendered frames, transcoded
    /// instances), without a generated corpus.
    Get,
}

/// The level at which the metadata phase asks for metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MetadataLevel {
    /// `/studies/{study}/series/{series}/instances/{instance}/metadata`.
    Instance,
    /// `/studies/{study}/series/{series}/metadata`.
    Series,
    /// `/studies/{study}/metadata`.
    Study,
}

/// How much one phase may do.
#[derive(Clone, Copy, Debug)]
pub struct PhaseLimits {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests to issue at most.
    pub requests: usize,
    /// No new request starts after this much time.
    pub duration: Duration,
}

/// Runs `operation(0..requests)` on `concurrency` workers. The operation's
/// synchronous part (building a body) runs before the clock starts; only the
/// returned future is timed.
pub async fn run_phase<Operation, RequestFuture>(
    name: &str,
    limits: PhaseLimits,
    operation: Operation,
) -> PhaseReport
where
    Operation: Fn(usize) -> RequestFuture + Send + Sync + 'static,
    RequestFuture: Future<Output = Result<Transfer, RequestFailure>> + Send + 'static,
{
    let operation = Arc::new(operation);
    let next_request = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(limits.concurrency);
    for _ in 0..limits.concurrency.max(1) {
        let operation = Arc::clone(&operation);
        let next_request = Arc::clone(&next_request);
        workers.push(tokio::spawn(async move {
            let mut observations = Observations::default();
            loop {
                let index = next_request.fetch_add(1, Ordering::Relaxed);
                if index >= limits.requests || started.elapsed() >= limits.duration {
                    break;
                }
                let request = operation(index);
                let request_started = Instant::now();
                let outcome = request.await;
                let latency = request_started.elapsed();
                observations.requests += 1;
                match outcome {
                    Ok(transfer) => {
                        observations.latencies.push(latency);
                        observations.items += transfer.items;
                        observations.bytes += transfer.bytes;
                    }
                    Err(failure) => {
                        *observations.errors.entry(failure.to_string()).or_insert(0) += 1;
                    }
                }
            }
            observations
        }));
    }
    let mut merged = Observations::default();
    for worker in workers {
        match worker.await {
            Ok(observations) => merged.merge(observations),
            Err(_) => {
                *merged
                    .errors
                    .entry("worker panicked".to_string())
                    .or_insert(0) += 1
            }
        }
    }
    PhaseReport::new(name, merged, started.elapsed())
}

/// Everything the phases share.
#[derive(Clone)]
pub struct Bench {
    /// The client.
    pub client: DicomWebClient,
    /// The corpus.
    pub corpus: Arc<Corpus>,
    /// Which instances are known to be on the server: all of them unless
    /// the STOW phase ran, in which case only those it stored.
    pub stored: Arc<Vec<AtomicBool>>,
}

impl Bench {
    /// A bench that assumes the whole corpus is already stored.
    pub fn new(client: DicomWebClient, corpus: Corpus) -> Self {
        let stored = (0..corpus.instances.len())
            .map(|_| AtomicBool::new(true))
            .collect();
        Bench {
            client,
            corpus: Arc::new(corpus),
            stored: Arc::new(stored),
        }
    }

    fn stored_instances(&self) -> Arc<Vec<usize>> {
        Arc::new(
            self.stored
                .iter()
                .enumerate()
                .filter(|(_, stored)| stored.load(Ordering::Relaxed))
                .map(|(index, _)| index)
                .collect(),
        )
    }

    /// Studies with at least one stored instance.
    fn stored_studies(&self) -> Arc<Vec<usize>> {
        let mut studies: Vec<usize> = self
            .stored_instances()
            .iter()
            .map(|&index| self.corpus.instances[index].study_index)
            .collect();
        studies.dedup();
        Arc::new(studies)
    }

    /// STOW-RS of every instance, `batch` instances per request.
    pub async fn stow(&self, limits: PhaseLimits, batch: usize) -> PhaseReport {
        let batch = batch.max(1);
        let instance_count = self.corpus.instances.len();
        for stored in self.stored.iter() {
            stored.store(false, Ordering::Relaxed);
        }
        let limits = PhaseLimits {
            requests: instance_count.div_ceil(batch),
            ..limits
        };
        let bench = self.clone();
        let boundary = multipart::new_boundary();
        let content_type: Arc<str> = multipart::stow_content_type(&boundary).into();
        let name = if batch == 1 {
            "stow".to_string()
        } else {
            format!("stow(batch {batch})")
        };
        run_phase(&name, limits, move |request_index| {
            let first = request_index * batch;
            let range = first..(first + batch).min(instance_count);
            let files = bench.corpus.instances[range.clone()]
                .iter()
                .map(|instance| &instance.file);
            let payload_bytes: u64 = files.clone().map(|file| file.len() as u64).sum();
            let body = multipart::build_dicom_multipart(&boundary, files);
            let bench = bench.clone();
            let content_type = Arc::clone(&content_type);
            async move {
                let transfer = bench
                    .client
                    .store(body, &content_type, range.len(), payload_bytes)
                    .await?;
                for index in range {
                    bench.stored[index].store(true, Ordering::Relaxed);
                }
                Ok(transfer)
            }
        })
        .await
    }

    /// WADO-RS retrieval of stored instances, round-robin.
    pub async fn wado(&self, limits: PhaseLimits) -> PhaseReport {
        let targets = self.stored_instances();
        if targets.is_empty() {
            return PhaseReport::new("wado", Observations::default(), Duration::ZERO);
        }
        let corpus = Arc::clone(&self.corpus);
        let client = self.client.clone();
        run_phase("wado", limits, move |request_index| {
            let instance = &corpus.instances[targets[request_index % targets.len()]];
            let study_uid = corpus.studies[instance.study_index].study_uid.clone();
            let series_uid = instance.series_uid.clone();
            let sop_instance_uid = instance.sop_instance_uid.clone();
            // The server may rewrite the meta group, but never drop pixels.
            let minimum_size = instance.file.len() / 2;
            let client = client.clone();
            async move {
                client
                    .retrieve_instance(&study_uid, &series_uid, &sop_instance_uid, minimum_size)
                    .await
            }
        })
        .await
    }

    /// WADO-RS metadata of stored instances at the chosen level, round-robin.
    pub async fn metadata(&self, limits: PhaseLimits, level: MetadataLevel) -> PhaseReport {
        let targets = self.stored_instances();
        let name = match level {
            MetadataLevel::Instance => "metadata",
            MetadataLevel::Series => "metadata(series)",
            MetadataLevel::Study => "metadata(study)",
        };
        if targets.is_empty() {
            return PhaseReport::new(name, Observations::default(), Duration::ZERO);
        }
        let corpus = Arc::clone(&self.corpus);
        let client = self.client.clone();
        run_phase(name, limits, move |request_index| {
            let instance = &corpus.instances[targets[request_index % targets.len()]];
            let study = &corpus.studies[instance.study_index];
            let (path, expected_count, expected_uid) = match level {
                MetadataLevel::Instance => (
                    format!(
                        "/studies/{}/series/{}/instances/{}/metadata",
                        study.study_uid, instance.series_uid, instance.sop_instance_uid
                    ),
                    1,
                    Some(instance.sop_instance_uid.clone()),
                ),
                MetadataLevel::Series => (
                    format!(
                        "/studies/{}/series/{}/metadata",
                        study.study_uid, instance.series_uid
                    ),
                    instance.series_instance_count,
                    None,
                ),
                MetadataLevel::Study => (
                    format!("/studies/{}/metadata", study.study_uid),
                    study.instance_count,
                    None,
                ),
            };
            let client = client.clone();
            async move {
                client
                    .retrieve_metadata(&path, expected_count, expected_uid.as_deref())
                    .await
            }
        })
        .await
    }

    /// GETs `paths` in turn (request `i` asks for `paths[i % len]`).
    pub async fn get(
        &self,
        limits: PhaseLimits,
        paths: Arc<Vec<String>>,
        accept: Arc<str>,
    ) -> PhaseReport {
        if paths.is_empty() {
            return PhaseReport::new("get", Observations::default(), Duration::ZERO);
        }
        let client = self.client.clone();
        run_phase("get", limits, move |request_index| {
            let client = client.clone();
            let paths = Arc::clone(&paths);
            let accept = Arc::clone(&accept);
            async move {
                let path = &paths[request_index % paths.len()];
                client.get(path, &accept).await
            }
        })
        .await
    }

    /// QIDO-RS: `/studies?PatientID=...` (exactly one match expected).
    pub async fn qido_by_patient(&self, limits: PhaseLimits) -> PhaseReport {
        let studies = self.stored_studies();
        if studies.is_empty() {
            return PhaseReport::new("qido-patient", Observations::default(), Duration::ZERO);
        }
        let corpus = Arc::clone(&self.corpus);
        let client = self.client.clone();
        run_phase("qido-patient", limits, move |request_index| {
            let study = &corpus.studies[studies[request_index % studies.len()]];
            let query = format!("PatientID={}", study.patient_id);
            let study_uid = study.study_uid.clone();
            let client = client.clone();
            async move { client.search_studies(&query, &study_uid, true).await }
        })
        .await
    }

    /// QIDO-RS: `/studies?StudyDate=from-to`, a month around a stored study's
    /// date (the study must be among the matches).
    pub async fn qido_by_date(&self, limits: PhaseLimits) -> PhaseReport {
        let studies = self.stored_studies();
        if studies.is_empty() {
            return PhaseReport::new("qido-date", Observations::default(), Duration::ZERO);
        }
        let corpus = Arc::clone(&self.corpus);
        let client = self.client.clone();
        run_phase("qido-date", limits, move |request_index| {
            let study = &corpus.studies[studies[request_index % studies.len()]];
            let from = study.study_date.saturating_sub(DateOffset::days(15));
            let to = study.study_date.saturating_add(DateOffset::days(15));
            let query = format!(
                "StudyDate={}-{}",
                format_dicom_date(from),
                format_dicom_date(to)
            );
            let study_uid = study.study_uid.clone();
            let client = client.clone();
            async move { client.search_studies(&query, &study_uid, false).await }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_request_budget_bounds_the_loop_and_every_outcome_is_counted() {
        let limits = PhaseLimits {
            concurrency: 3,
            requests: 10,
            duration: Duration::from_secs(3600),
        };
        let report = run_phase("test", limits, |index| async move {
            if index % 5 == 0 {
                Err(RequestFailure::Status(503))
            } else {
                Ok(Transfer {
                    items: 2,
                    bytes: 100,
                })
            }
        })
        .await;
        assert_eq!(report.requests, 10);
        assert_eq!(report.errors, 2);
        assert_eq!(report.error_kinds.get("HTTP 503"), Some(&2));
        assert_eq!(report.items, 16);
        assert_eq!(report.bytes, 800);
    }

    #[tokio::test]
    async fn the_time_budget_stops_new_requests() {
        let limits = PhaseLimits {
            concurrency: 2,
            requests: usize::MAX,
            duration: Duration::ZERO,
        };
        let report = run_phase("test", limits, |_| async {
            Ok(Transfer { items: 1, bytes: 1 })
        })
        .await;
        assert_eq!(report.requests, 0);
    }
}
