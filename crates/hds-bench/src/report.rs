//! The run report: a fixed-width table for people, JSON for scripts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::corpus::{Corpus, CorpusShape};
use crate::stats::PhaseReport;

/// What was generated (no identifiers: the corpus is synthetic, but the
/// report stays free of patient-like values all the same).
#[derive(Clone, Debug, Serialize)]
pub struct CorpusSummary {
    /// Studies.
    pub studies: usize,
    /// Series per study.
    pub series_per_study: usize,
    /// Instances per study.
    pub instances_per_study: usize,
    /// Image matrix, `ROWSxCOLUMNS`.
    pub pixel_size: String,
    /// Seed that regenerates the corpus.
    pub seed: u64,
    /// Instances in total.
    pub instances: usize,
    /// Encoded bytes in total.
    pub bytes: u64,
    /// Mean encoded instance size.
    pub mean_instance_bytes: u64,
}

impl CorpusSummary {
    /// Summarises a generated corpus.
    pub fn new(shape: &CorpusShape, corpus: &Corpus) -> Self {
        let bytes = corpus.total_bytes();
        CorpusSummary {
            studies: shape.studies,
            series_per_study: shape.series_per_study,
            instances_per_study: shape.instances_per_study,
            pixel_size: shape.pixel_size.to_string(),
            seed: shape.seed,
            instances: corpus.instances.len(),
            bytes,
            mean_instance_bytes: bytes / (corpus.instances.len().max(1) as u64),
        }
    }
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Always `hds-bench`.
    pub tool: String,
    /// Tool version.
    pub version: String,
    /// The DICOMweb base URL measured.
    pub base_url: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The corpus.
    pub corpus: CorpusSummary,
    /// One entry per phase, in run order.
    pub phases: Vec<PhaseReport>,
}

/// Renders the run as a table, one row per phase.
pub fn table(run: &RunReport) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail, so the results are ignored.
    let _ = writeln!(
        text,
        "{} concurrency {}, {} instances of {} ({:.0} KiB each)",
        run.base_url,
        run.concurrency,
        run.corpus.instances,
        run.corpus.pixel_size,
        run.corpus.mean_instance_bytes as f64 / 1024.0
    );
    let _ = writeln!(
        text,
        "{:<18} {:>7} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "phase",
        "count",
        "errors",
        "elapsed_s",
        "req/s",
        "items/s",
        "MB/s",
        "p50_ms",
        "p90_ms",
        "p99_ms"
    );
    for phase in &run.phases {
        let _ = writeln!(
            text,
            "{:<18} {:>7} {:>6} {:>9.2} {:>9.1} {:>9.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            phase.phase,
            phase.requests,
            phase.errors,
            phase.elapsed_s,
            phase.requests_per_s,
            phase.items_per_s,
            phase.megabytes_per_s,
            phase.latency.p50_ms,
            phase.latency.p90_ms,
            phase.latency.p99_ms
        );
        for (kind, count) in &phase.error_kinds {
            let _ = writeln!(text, "  {count} x {kind}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{LatencySummary, Observations};
    use std::time::Duration;

    #[test]
    fn table_has_a_row_per_phase_and_lists_error_kinds() {
        let mut observations = Observations {
            latencies: vec![Duration::from_millis(12)],
            requests: 2,
            items: 1,
            bytes: 500_000,
            ..Observations::default()
        };
        observations.errors.insert("HTTP 500".into(), 1);
        let run = RunReport {
            tool: "hds-bench".into(),
            version: "0".into(),
            base_url: "http://127.0.0.1:1/dicom-web".into(),
            concurrency: 4,
            corpus: CorpusSummary {
                studies: 1,
                series_per_study: 1,
                instances_per_study: 1,
                pixel_size: "512x512".into(),
                seed: 1,
                instances: 1,
                bytes: 525_000,
                mean_instance_bytes: 525_000,
            },
            phases: vec![PhaseReport::new(
                "stow",
                observations,
                Duration::from_secs(1),
            )],
        };
        let rendered = table(&run);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].starts_with("stow"));
        assert!(lines[2].contains("12.0"));
        assert_eq!(lines[3].trim(), "1 x HTTP 500");
        assert_eq!(
            run.phases[0].latency,
            LatencySummary::from_samples(&mut [Duration::from_millis(12)])
        );
        let json = serde_json::to_value(&run).expect("serialises");
        assert_eq!(json["phases"][0]["errors"], 1);
        assert_eq!(json["phases"][0]["latency"]["p50_ms"], 12.0);
    }
}
