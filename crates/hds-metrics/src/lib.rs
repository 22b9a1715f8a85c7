//! hds's Prometheus metrics: one registry ([`Metrics`]), a typed handle for each part of hds
//! that records into it, and the text exposition of a scrape ([`Metrics::encode`]).
//!
//! The crates that record depend on this one and on nothing of HTTP: they get their handle
//! (`KeyVaultCallMetrics`, `GroupCommitMetrics`, ...) from the composition root. A handle's
//! `Default` is detached from every registry, so a component built without metrics (a test,
//! a library user) records into nothing at no noticeable cost.
//!
//! No label ever carries a value that comes from a request: routes are route templates
//! (`/dicom/{workspace}/{service}/{version}/studies/{study}`), services are internal service ids, and
//! every other label takes one of a few fixed words. A scrape is therefore free of PHI and of
//! key material by construction, and its size is bounded by the number of routes and services.

#![deny(missing_docs)]

use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Latency buckets in seconds, 1 ms to about 33 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

/// Every metric of one hds process. Cheap to clone: the handles share their values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Requests on the main listener.
    pub http: HttpMetrics,
    /// Calls of the Key Vault client (`hds-cmk`).
    pub key_vault_calls: KeyVaultCallMetrics,
    /// The index's group commits (`hds-index`).
    pub group_commits: GroupCommitMetrics,
    /// The orphan sweeper (`hds-backup`).
    pub orphan_sweeps: OrphanSweepMetrics,
    /// Deliveries of DICOM events to webhooks (`hds-events`).
    pub event_deliveries: EventDeliveryMetrics,
    key_access: Arc<RwLock<Option<Arc<dyn KeyAccessStates>>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry holding every hds metric, all at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hds");
        let http = HttpMetrics::default();
        registry.register(
            "http_requests",
            "Requests on the main listener by method, matched route template and status",
            http.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's head to its response's head, by method, route template and status",
            http.durations.clone(),
        );
        registry.register(
            "http_open_connections",
            "Connections the main listener holds now",
            http.open_connections.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Requests the main listener is handling now, their response bodies included",
            http.requests_in_flight.clone(),
        );
        registry.register(
            "dicomweb_bytes",
            "DICOMweb payload bytes: request bodies of STOW-RS (operation=stow) and response bodies of WADO-RS (operation=wado)",
            http.dicomweb_bytes.clone(),
        );
        let key_vault_calls = KeyVaultCallMetrics::default();
        registry.register(
            "key_vault_calls",
            "Calls of the Key Vault client by operation (get, wrap, unwrap) and outcome",
            key_vault_calls.calls.clone(),
        );
        registry.register(
            "key_vault_call_duration_seconds",
            "Duration of the Key Vault client's calls by operation and outcome",
            key_vault_calls.durations.clone(),
        );
        let group_commits = GroupCommitMetrics::default();
        registry.register(
            "index_group_commit_size",
            "Instance stores recorded by one index commit",
            group_commits.sizes.clone(),
        );
        let orphan_sweeps = OrphanSweepMetrics::default();
        registry.register(
            "orphan_sweeps",
            "Orphan sweeps by outcome (ok, error)",
            orphan_sweeps.sweeps.clone(),
        );
        registry.register(
            "orphan_sweep_removed",
            "What orphan sweeps removed, by kind (blobs, temporaries, study_keys)",
            orphan_sweeps.removed.clone(),
        );
        let event_deliveries = EventDeliveryMetrics::default();
        registry.register(
            "event_delivery_attempts",
            "Attempts to post a batch of DICOM events to a webhook, by outcome (delivered, retried, dead_lettered)",
            event_deliveries.attempts.clone(),
        );
        registry.register(
            "events",
            "DICOM events by outcome: delivered (acknowledged by the webhook) or dead_lettered (given up under the retry policy, or refused)",
            event_deliveries.events.clone(),
        );
        let key_access: Arc<RwLock<Option<Arc<dyn KeyAccessStates>>>> = Arc::default();
        registry.register_collector(Box::new(KeyAccessCollector {
            source: key_access.clone(),
        }));
        Metrics {
            registry: Arc::new(registry),
            http,
            key_vault_calls,
            group_commits,
            orphan_sweeps,
            event_deliveries,
            key_access,
        }
    }

    /// Reports the key-access state of every DICOM service from `source` at each scrape.
    pub fn set_key_access_source(&self, source: Arc<dyn KeyAccessStates>) {
        let mut slot = self
            .key_access
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(source);
    }

    /// A scrape: the OpenMetrics text exposition (which Prometheus reads as its text format).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail, and every metric encodes itself without error.
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
            let _ = writeln!(text, "# EOF");
        }
        text
    }
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationOutcomeLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type HistogramFamily<Labels> = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// The main listener's requests, connections and DICOMweb payload bytes.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<RequestLabels>,
    open_connections: Gauge,
    requests_in_flight: Gauge,
    dicomweb_bytes: Family<OperationLabels, Counter>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
            open_connections: Gauge::default(),
            requests_in_flight: Gauge::default(),
            dicomweb_bytes: Family::default(),
        }
    }
}

/// Which DICOMweb payload a byte count belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DicomWebPayload {
    /// A STOW-RS request body.
    Stow,
    /// A WADO-RS response body.
    Wado,
}

impl HttpMetrics {
    /// One answered request. `route` must be a route template (never the request's path:
    /// UIDs in paths are PHI); `method` one of the methods a route serves.
    pub fn record_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        };
        self.durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// `bytes` more of a DICOMweb payload.
    pub fn add_dicomweb_bytes(&self, payload: DicomWebPayload, bytes: u64) {
        let operation = match payload {
            DicomWebPayload::Stow => "stow",
            DicomWebPayload::Wado => "wado",
        };
        self.dicomweb_bytes
            .get_or_create(&OperationLabels { operation })
            .inc_by(bytes);
    }

    /// A connection was admitted; the guard counts it until dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        OpenConnection {
            _counted: Counted::new(&self.open_connections),
        }
    }

    /// A request was admitted under the in-flight cap; the guard counts it until dropped.
    pub fn request_admitted(&self) -> AdmittedRequest {
        AdmittedRequest {
            _counted: Counted::new(&self.requests_in_flight),
        }
    }
}

/// One open connection, counted in `hds_http_open_connections` until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    _counted: Counted,
}

/// One request being handled, counted in `hds_http_requests_in_flight` until dropped.
#[derive(Debug)]
pub struct AdmittedRequest {
    _counted: Counted,
}

/// One more in a gauge for as long as it lives.
#[derive(Debug)]
struct Counted(Gauge);

impl Counted {
    fn new(gauge: &Gauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An operation of the Key Vault client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVaultOperation {
    /// Get a key (its latest or a given version).
    Get,
    /// Wrap a key.
    Wrap,
    /// Unwrap a key.
    Unwrap,
}

impl KeyVaultOperation {
    fn label(self) -> &'static str {
        match self {
            KeyVaultOperation::Get => "get",
            KeyVaultOperation::Wrap => "wrap",
            KeyVaultOperation::Unwrap => "unwrap",
        }
    }
}

/// The Key Vault client's calls: count and duration by operation and outcome.
#[derive(Clone, Debug)]
pub struct KeyVaultCallMetrics {
    calls: Family<OperationOutcomeLabels, Counter>,
    durations: HistogramFamily<OperationOutcomeLabels>,
}

impl Default for KeyVaultCallMetrics {
    fn default() -> Self {
        KeyVaultCallMetrics {
            calls: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl KeyVaultCallMetrics {
    /// One call of `operation` that ended in `outcome` (a fixed word such as `ok`,
    /// `forbidden`, `network`) after `elapsed`.
    pub fn record(&self, operation: KeyVaultOperation, outcome: &'static str, elapsed: Duration) {
        let labels = OperationOutcomeLabels {
            operation: operation.label(),
            outcome,
        };
        self.durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.calls.get_or_create(&labels).inc();
    }
}

/// The sizes of the index's commits of instance stores.
#[derive(Clone, Debug)]
pub struct GroupCommitMetrics {
    sizes: Histogram,
}

impl Default for GroupCommitMetrics {
    fn default() -> Self {
        GroupCommitMetrics {
            sizes: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
        }
    }
}

impl GroupCommitMetrics {
    /// One commit recorded `stores` instance stores.
    pub fn record(&self, stores: usize) {
        // A group holds at most a few hundred stores: exact as an f64.
        self.sizes.observe(stores as f64);
    }
}

/// The orphan sweeper's runs and what they removed.
#[derive(Clone, Debug, Default)]
pub struct OrphanSweepMetrics {
    sweeps: Family<OutcomeLabels, Counter>,
    removed: Family<KindLabels, Counter>,
}

/// What one successful sweep removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct SweepRemovals {
    /// Blobs no index row referenced.
    pub blobs: u64,
    /// Temporary blobs of writes that never completed.
    pub temporaries: u64,
    /// Study keys of studies that no longer exist.
    pub study_keys: u64,
}

impl OrphanSweepMetrics {
    /// A sweep that completed, removing `removals`.
    pub fn record_success(&self, removals: SweepRemovals) {
        self.sweeps
            .get_or_create(&OutcomeLabels { outcome: "ok" })
            .inc();
        for (kind, count) in [
            ("blobs", removals.blobs),
            ("temporaries", removals.temporaries),
            ("study_keys", removals.study_keys),
        ] {
            self.removed
                .get_or_create(&KindLabels { kind })
                .inc_by(count);
        }
    }

    /// A sweep that failed.
    pub fn record_failure(&self) {
        self.sweeps
            .get_or_create(&OutcomeLabels { outcome: "error" })
            .inc();
    }
}

/// Deliveries of DICOM events: what became of each attempt to post a batch, and of the events.
/// Labels are fixed words only (no subscription or URL): dead letters are otherwise visible
/// only in the subscription's row.
#[derive(Clone, Debug, Default)]
pub struct EventDeliveryMetrics {
    attempts: Family<OutcomeLabels, Counter>,
    events: Family<OutcomeLabels, Counter>,
}

impl EventDeliveryMetrics {
    /// A batch of `events` acknowledged by its webhook.
    pub fn delivered(&self, events: u64) {
        self.record("delivered", events);
    }

    /// A failed attempt that will be retried.
    pub fn retried(&self) {
        self.attempts
            .get_or_create(&OutcomeLabels { outcome: "retried" })
            .inc();
    }

    /// A batch of `events` given up: refused by its webhook, or out of retries.
    pub fn dead_lettered(&self, events: u64) {
        self.record("dead_lettered", events);
    }

    fn record(&self, outcome: &'static str, events: u64) {
        self.attempts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.events
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(events);
    }
}

/// Where the key-access states of the DICOM services come from (the key-access monitor).
pub trait KeyAccessStates: Send + Sync + 'static {
    /// Each registered service's internal id and its state's name (`Healthy`,
    /// `KeyAccessLost`, `RequiresUpdate`).
    fn key_access_states(&self) -> Vec<(String, &'static str)>;
}

/// The states a service's key access can be in, each reported as a 0/1 gauge.
const KEY_ACCESS_STATES: [&str; 3] = ["Healthy", "KeyAccessLost", "RequiresUpdate"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyAccessLabels {
    service_id: String,
    state: &'static str,
}

/// Reads the key-access states at each scrape: always current, and a deleted service simply
/// disappears.
struct KeyAccessCollector {
    source: Arc<RwLock<Option<Arc<dyn KeyAccessStates>>>>,
}

impl std::fmt::Debug for KeyAccessCollector {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeyAccessCollector")
            .finish_non_exhaustive()
    }
}

impl Collector for KeyAccessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let source = self
            .source
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let states = source
            .map(|source| source.key_access_states())
            .unwrap_or_default();
        let mut metric_encoder = encoder.encode_descriptor(
            "key_access_state",
            "1 for the state each DICOM service's customer-managed key access is in, by internal service id",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (service_id, current) in states {
            for state in KEY_ACCESS_STATES {
                let labels = KeyAccessLabels {
                    service_id: service_id.clone(),
                    state,
                };
                let gauge = ConstGauge::new(i64::from(state == current));
                gauge.encode(metric_encoder.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneService;

    impl KeyAccessStates for OneService {
        fn key_access_states(&self) -> Vec<(String, &'static str)> {
            vec![("svc-1".to_owned(), "KeyAccessLost")]
        }
    }

    #[test]
    fn a_scrape_names_what_was_recorded() {
        let metrics = Metrics::new();
        metrics.http.record_request(
            "GET",
            "/dicom/{workspace}/{service}/{version}/studies",
            200,
            Duration::from_millis(3),
        );
        metrics.http.add_dicomweb_bytes(DicomWebPayload::Stow, 1234);
        let connection = metrics.http.connection_opened();
        let request = metrics.http.request_admitted();
        metrics
            .key_vault_calls
            .record(KeyVaultOperation::Wrap, "ok", Duration::from_millis(20));
        metrics.group_commits.record(3);
        metrics.orphan_sweeps.record_success(SweepRemovals {
            blobs: 2,
            ..SweepRemovals::default()
        });
        metrics.set_key_access_source(Arc::new(OneService));
        let text = metrics.encode();
        assert!(text.contains(
            "hds_http_requests_total{method=\"GET\",route=\"/dicom/{workspace}/{service}/{version}/studies\",status=\"200\"} 1"
        ), "{text}");
        assert!(text.contains("hds_dicomweb_bytes_total{operation=\"stow\"} 1234"));
        assert!(text.contains("hds_http_open_connections 1"), "{text}");
        assert!(text.contains("hds_http_requests_in_flight 1"));
        assert!(text.contains("hds_key_vault_calls_total{operation=\"wrap\",outcome=\"ok\"} 1"));
        assert!(text.contains("hds_index_group_commit_size_count 1"));
        assert!(text.contains("hds_orphan_sweep_removed_total{kind=\"blobs\"} 2"));
        assert!(
            text.contains("\nhds_key_access_state{service_id=\"svc-1\",state=\"KeyAccessLost\"} 1"),
            "{text}"
        );
        assert!(text.contains("\nhds_key_access_state{service_id=\"svc-1\",state=\"Healthy\"} 0"));
        assert!(!text.contains("hds_hds_"));
        assert!(text.trim_end().ends_with("# EOF"));
        drop(connection);
        drop(request);
        let text = metrics.encode();
        assert!(text.contains("hds_http_open_connections 0"));
        assert!(text.contains("hds_http_requests_in_flight 0"));
    }

    #[test]
    fn a_detached_handle_records_into_nothing() {
        let metrics = Metrics::new();
        KeyVaultCallMetrics::default().record(KeyVaultOperation::Get, "ok", Duration::ZERO);
        assert!(!metrics.encode().contains("operation=\"get\""));
    }
}
