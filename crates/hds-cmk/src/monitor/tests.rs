//! The 30-minute rule driven by `probe_now` and a manual clock, and the persistence of states
//! across a reopen on SQLite and PostgreSQL.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::validate::ValidationCode;

const VERSION_1: &str = "11111111111111111111111111111111";
const VERSION_2: &str = "22222222222222222222222222222222";

/// A clock the tests move by hand.
struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(
            OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        )))
    }

    fn advance(&self, seconds: i64) {
        let mut now = self.0.lock().unwrap();
        *now += time::Duration::seconds(seconds);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

/// A probe whose outcome the test sets.
struct FakeProbe {
    outcome: Mutex<Result<KeyUrl, ValidationError>>,
    calls: AtomicUsize,
}

impl FakeProbe {
    fn new() -> Arc<FakeProbe> {
        Arc::new(FakeProbe {
            outcome: Mutex::new(Ok(kid(VERSION_1))),
            calls: AtomicUsize::new(0),
        })
    }

    fn succeed_with(&self, version: &str) {
        *self.outcome.lock().unwrap() = Ok(kid(version));
    }

    fn fail(&self, code: ValidationCode) {
        *self.outcome.lock().unwrap() = Err(ValidationError::new(code, "the test says so"));
    }
}

impl KeyProbe for FakeProbe {
    fn probe<'a>(&'a self, _binding: &'a KeyBinding) -> ProbeFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let outcome = self.outcome.lock().unwrap().clone();
        Box::pin(async move { outcome })
    }
}

fn kid(version: &str) -> KeyUrl {
    KeyUrl::parse(&format!("https://127.0.0.1:9443/keys/cmk/{version}")).unwrap()
}

fn binding(versioned: bool) -> KeyBinding {
    KeyBinding {
        key_url: if versioned {
            kid(VERSION_1)
        } else {
            KeyUrl::parse("https://127.0.0.1:9443/keys/cmk").unwrap()
        },
        principal_id: "principal-1".into(),
        tenant_id: "tenant-1".into(),
    }
}

/// Probe every 60 s, latch after 30 min, as in production; the clock is moved by hand.
fn config() -> MonitorConfig {
    MonitorConfig::default()
}

async fn sqlite_database(directory: &tempfile::TempDir) -> Database {
    let url = format!("sqlite:{}", directory.path().join("hds.db").display());
    Database::connect(&url).await.unwrap()
}

async fn monitor_on(
    database: Database,
    probe: Arc<FakeProbe>,
    clock: Arc<ManualClock>,
) -> KeyAccessMonitor {
    KeyAccessMonitor::open(database, config(), probe, clock)
        .await
        .unwrap()
}

const SERVICE: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.HealthcareApis/workspaces/w/dicomservices/d";

#[tokio::test]
async fn lost_access_recovers_by_itself_within_the_latch() {
    let directory = tempfile::tempdir().unwrap();
    let (probe, clock) = (FakeProbe::new(), ManualClock::new());
    let monitor = monitor_on(
        sqlite_database(&directory).await,
        probe.clone(),
        clock.clone(),
    )
    .await;
    assert_eq!(
        monitor.register(SERVICE, binding(true)).await.unwrap(),
        KeyAccessState::Healthy
    );
    let mut receiver = monitor.subscribe(SERVICE).unwrap();
    assert_eq!(
        monitor.probe_now(SERVICE).await.unwrap(),
        KeyAccessState::Healthy
    );

    probe.fail(ValidationCode::KeyAccessDenied);
    let lost_at = clock.now();
    let state = monitor.probe_now(SERVICE).await.unwrap();
    assert_eq!(state.name(), "KeyAccessLost");
    assert!(receiver.has_changed().unwrap());
    assert_eq!(receiver.borrow_and_update().name(), "KeyAccessLost");
    assert_eq!(
        state.reason().unwrap().code,
        ValidationCode::KeyAccessDenied
    );

    // 29 minutes of failing probes: still lost, since unchanged, the latest reason kept.
    clock.advance(29 * 60);
    probe.fail(ValidationCode::KeyDisabled);
    match monitor.probe_now(SERVICE).await.unwrap() {
        KeyAccessState::KeyAccessLost { since, reason } => {
            assert_eq!(since, lost_at);
            assert_eq!(reason.code, ValidationCode::KeyDisabled);
        }
        other => panic!("expected KeyAccessLost, got {other:?}"),
    }

    probe.succeed_with(VERSION_1);
    clock.advance(59);
    assert_eq!(
        monitor.probe_now(SERVICE).await.unwrap(),
        KeyAccessState::Healthy
    );
    assert_eq!(*receiver.borrow_and_update(), KeyAccessState::Healthy);
    assert_eq!(monitor.state(SERVICE), Some(KeyAccessState::Healthy));
}

#[tokio::test]
async fn access_lost_past_the_latch_needs_an_update() {
    let directory = tempfile::tempdir().unwrap();
    let (probe, clock) = (FakeProbe::new(), ManualClock::new());
    let monitor = monitor_on(
        sqlite_database(&directory).await,
        probe.clone(),
        clock.clone(),
    )
    .await;
    monitor.register(SERVICE, binding(true)).await.unwrap();
    probe.fail(ValidationCode::KeyVaultKeyNotFound);
    monitor.probe_now(SERVICE).await.unwrap();
    let lost_at = clock.now();
    clock.advance(30 * 60);
    match monitor.probe_now(SERVICE).await.unwrap() {
        KeyAccessState::RequiresUpdate { since, reason } => {
            assert_eq!(since, lost_at);
            assert_eq!(reason.code, ValidationCode::KeyVaultKeyNotFound);
        }
        other => panic!("expected RequiresUpdate, got {other:?}"),
    }
    // Access comes back: the latch holds.
    probe.succeed_with(VERSION_1);
    clock.advance(60);
    assert_eq!(
        monitor.probe_now(SERVICE).await.unwrap().name(),
        "RequiresUpdate"
    );
    let message = monitor
        .state(SERVICE)
        .unwrap()
        .data_plane_message()
        .unwrap();
    assert!(message.contains("update the DICOM service"), "{message}");
    // The update of the DICOM service revalidates.
    assert_eq!(
        monitor.revalidate(SERVICE).await.unwrap(),
        KeyAccessState::Healthy
    );
}

#[tokio::test]
async fn success_seen_only_after_the_latch_still_latches() {
    let directory = tempfile::tempdir().unwrap();
    let (probe, clock) = (FakeProbe::new(), ManualClock::new());
    let monitor = monitor_on(
        sqlite_database(&directory).await,
        probe.clone(),
        clock.clone(),
    )
    .await;
    monitor.register(SERVICE, binding(true)).await.unwrap();
    probe.fail(ValidationCode::KeyVaultUnreachable);
    monitor.probe_now(SERVICE).await.unwrap();
    // The next probe comes late (the host slept): access was lost for the whole latch.
    clock.advance(31 * 60);
    probe.succeed_with(VERSION_1);
    assert_eq!(
        monitor.probe_now(SERVICE).await.unwrap().name(),
        "RequiresUpdate"
    );
}

#[tokio::test]
async fn revalidate_that_fails_reports_and_keeps_the_latch() {
    let directory = tempfile::tempdir().unwrap();
    let (probe, clock) = (FakeProbe::new(), ManualClock::new());
    let monitor = monitor_on(
        sqlite_database(&directory).await,
        probe.clone(),
        clock.clone(),
    )
    .await;
    monitor.register(SERVICE, binding(true)).await.unwrap();
    probe.fail(ValidationCode::KeyAccessDenied);
    monitor.probe_now(SERVICE).await.unwrap();
    clock.advance(45 * 60);
    monitor.probe_now(SERVICE).await.unwrap();
    match monitor.revalidate(SERVICE).await {
        Err(MonitorError::AccessFailed(reason)) => {
            assert_eq!(reason.code, ValidationCode::KeyAccessDenied)
        }
        other => panic!("expected AccessFailed, got {other:?}"),
    }
    assert_eq!(monitor.state(SERVICE).unwrap().name(), "RequiresUpdate");
    // Revalidating a healthy or merely lost service is harmless.
    probe.succeed_with(VERSION_1);
    assert!(monitor.revalidate(SERVICE).await.unwrap().is_healthy());
}

#[tokio::test]
async fn unknown_services_are_reported() {
    let directory = tempfile::tempdir().unwrap();
    let monitor = monitor_on(
        sqlite_database(&directory).await,
        FakeProbe::new(),
        ManualClock::new(),
    )
    .await;
    assert!(matches!(
        monitor.probe_now("nope").await,
        Err(MonitorError::NotRegistered(_))
    ));
    assert!(monitor.state("nope").is_none());
    assert!(monitor.subscribe("nope").is_none());
}

#[tokio::test]
async fn versionless_keys_report_new_versions() {
    let directory = tempfile::tempdir().unwrap();
    let (probe, clock) = (FakeProbe::new(), ManualClock::new());
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::clone(&seen);
    let monitor = monitor_on(
        sqlite_database(&directory).await,
        probe.clone(),
        clock.clone(),
    )
    .await
    .with_new_version_listener(Arc::new(move |service: &str, kid: &KeyUrl| {
        recorder
            .lock()
            .unwrap()
            .push((service.to_owned(), kid.to_string()));
    }));
    monitor.register(SERVICE, binding(false)).await.unwrap();
    monitor.probe_now(SERVICE).await.unwrap();
    monitor.probe_now(SERVICE).await.unwrap();
    probe.succeed_with(VERSION_2);
    monitor.probe_now(SERVICE).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (SERVICE.to_owned(), kid(VERSION_1).to_string()),
            (SERVICE.to_owned(), kid(VERSION_2).to_string()),
        ]
    );
    assert_eq!(
        monitor.current_key_id(SERVICE),
        Some(kid(VERSION_2).to_string())
    );

    // A versioned binding never reports: its version is fixed.
    let other = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.HealthcareApis/workspaces/w/dicomservices/e";
    monitor.register(other, binding(true)).await.unwrap();
    monitor.probe_now(other).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn run_probes_until_shutdown() {
    let directory = tempfile::tempdir().unwrap();
    let (probe, clock) = (FakeProbe::new(), ManualClock::new());
    let monitor = Arc::new(
        KeyAccessMonitor::open(
            sqlite_database(&directory).await,
            MonitorConfig {
                probe_interval: Duration::from_millis(10),
                ..MonitorConfig::default()
            },
            probe.clone(),
            clock,
        )
        .await
        .unwrap(),
    );
    monitor.register(SERVICE, binding(true)).await.unwrap();
    probe.fail(ValidationCode::KeyDisabled);
    let mut receiver = monitor.subscribe(SERVICE).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = Arc::clone(&monitor);
    let task = tokio::spawn(async move {
        running
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    // The background loop's first probe turns the state; no timing is asserted.
    receiver.changed().await.unwrap();
    assert_eq!(receiver.borrow().name(), "KeyAccessLost");
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(probe.calls.load(Ordering::SeqCst) >= 1);
}

/// States and the last seen version survive closing and reopening the database.
async fn persistence_suite(database_url: &str) {
    let (probe, clock) = (FakeProbe::new(), ManualClock::new());
    let lost_at;
    {
        let database = Database::connect(database_url).await.unwrap();
        let monitor = monitor_on(database.clone(), probe.clone(), clock.clone()).await;
        monitor.register(SERVICE, binding(false)).await.unwrap();
        monitor.probe_now(SERVICE).await.unwrap();
        probe.fail(ValidationCode::KeyAccessDenied);
        monitor.probe_now(SERVICE).await.unwrap();
        lost_at = clock.now();
        clock.advance(31 * 60);
        assert_eq!(
            monitor.probe_now(SERVICE).await.unwrap().name(),
            "RequiresUpdate"
        );
        monitor.register("other", binding(true)).await.unwrap();
        probe.fail(ValidationCode::KeyVaultUnreachable);
        monitor.probe_now("other").await.unwrap();
        database.close().await;
    }
    let database = Database::connect(database_url).await.unwrap();
    probe.succeed_with(VERSION_1);
    let monitor = monitor_on(database.clone(), probe.clone(), clock.clone()).await;
    match monitor.register(SERVICE, binding(false)).await.unwrap() {
        KeyAccessState::RequiresUpdate { since, reason } => {
            assert_eq!(since, lost_at);
            assert_eq!(reason.code, ValidationCode::KeyAccessDenied);
            assert_eq!(reason.message, "the test says so");
        }
        other => panic!("expected RequiresUpdate after reopen, got {other:?}"),
    }
    assert_eq!(
        monitor.current_key_id(SERVICE),
        Some(kid(VERSION_1).to_string())
    );
    // The restart does not clear the latch.
    assert_eq!(
        monitor.probe_now(SERVICE).await.unwrap().name(),
        "RequiresUpdate"
    );
    // The other service's clock kept running across the restart: it latches too.
    assert_eq!(
        monitor
            .register("other", binding(true))
            .await
            .unwrap()
            .name(),
        "KeyAccessLost"
    );
    clock.advance(30 * 60);
    probe.fail(ValidationCode::KeyVaultUnreachable);
    assert_eq!(
        monitor.probe_now("other").await.unwrap().name(),
        "RequiresUpdate"
    );
    // Revalidated, unregistered: gone from the store.
    probe.succeed_with(VERSION_1);
    monitor.revalidate(SERVICE).await.unwrap();
    monitor.unregister("other").await.unwrap();
    database.close().await;

    let database = Database::connect(database_url).await.unwrap();
    let monitor = monitor_on(database.clone(), probe, clock).await;
    assert!(
        monitor
            .register(SERVICE, binding(false))
            .await
            .unwrap()
            .is_healthy()
    );
    assert!(
        monitor
            .register("other", binding(true))
            .await
            .unwrap()
            .is_healthy()
    );
    database.close().await;
}

#[tokio::test]
async fn state_persists_across_reopen_on_sqlite() {
    let directory = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", directory.path().join("hds.db").display());
    persistence_suite(&url).await;
}

#[tokio::test]
async fn state_persists_across_reopen_on_postgres() {
    let cluster = hds_db::testing::PostgresCluster::shared().unwrap();
    let url = cluster.fresh_database().await.unwrap();
    persistence_suite(&url).await;
}

/// Two nodes (two monitors, each with its own probe and pool) on one database share one
/// state: the first failure's `since`, the latch reached by either, and a revalidation made by
/// one, which the other follows at its next probe.
async fn nodes_share_one_state_suite(database_url: &str) {
    let clock = ManualClock::new();
    let (probe_a, probe_b) = (FakeProbe::new(), FakeProbe::new());
    let node_a = monitor_on(
        Database::connect(database_url).await.unwrap(),
        probe_a.clone(),
        clock.clone(),
    )
    .await;
    let node_b = monitor_on(
        Database::connect(database_url).await.unwrap(),
        probe_b.clone(),
        clock.clone(),
    )
    .await;
    node_a.register(SERVICE, binding(true)).await.unwrap();
    node_b.register(SERVICE, binding(true)).await.unwrap();
    let mut node_b_changes = node_b.subscribe(SERVICE).unwrap();

    probe_a.fail(ValidationCode::KeyDisabled);
    let lost_at = clock.now();
    assert_eq!(
        node_a.probe_now(SERVICE).await.unwrap().name(),
        "KeyAccessLost"
    );
    // B has not probed yet, but what it reports (resource health) is the shared state.
    assert_eq!(
        node_b
            .shared_state(SERVICE)
            .await
            .unwrap()
            .map(|state| state.name()),
        Some("KeyAccessLost")
    );
    clock.advance(10 * 60);
    probe_b.fail(ValidationCode::KeyDisabled);
    match node_b.probe_now(SERVICE).await.unwrap() {
        KeyAccessState::KeyAccessLost { since, .. } => assert_eq!(since, lost_at),
        other => panic!("expected KeyAccessLost since A's first failure, got {other:?}"),
    }
    assert_eq!(node_b_changes.borrow_and_update().name(), "KeyAccessLost");

    // Past the latch counted from A's failure: B latches; A's next success does not undo it.
    clock.advance(21 * 60);
    assert_eq!(
        node_b.probe_now(SERVICE).await.unwrap().name(),
        "RequiresUpdate"
    );
    probe_a.succeed_with(VERSION_1);
    assert_eq!(
        node_a.probe_now(SERVICE).await.unwrap().name(),
        "RequiresUpdate"
    );

    // An update handled by A revalidates; B follows at its next probe.
    node_a.revalidate(SERVICE).await.unwrap();
    assert_eq!(
        node_b.shared_state(SERVICE).await.unwrap(),
        Some(KeyAccessState::Healthy)
    );
    assert_eq!(
        node_b.state(SERVICE).map(|state| state.name()),
        Some("RequiresUpdate")
    );
    probe_b.succeed_with(VERSION_1);
    clock.advance(60);
    assert_eq!(
        node_b.probe_now(SERVICE).await.unwrap(),
        KeyAccessState::Healthy
    );
    assert!(node_b_changes.has_changed().unwrap());
    assert_eq!(*node_b_changes.borrow_and_update(), KeyAccessState::Healthy);
}

#[tokio::test]
async fn nodes_share_one_state_on_sqlite() {
    let directory = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", directory.path().join("hds.db").display());
    nodes_share_one_state_suite(&url).await;
}

#[tokio::test]
async fn nodes_share_one_state_on_postgres() {
    let cluster = hds_db::testing::PostgresCluster::shared().unwrap();
    let url = cluster.fresh_database().await.unwrap();
    nodes_share_one_state_suite(&url).await;
}

#[test]
fn data_plane_message_names_the_configured_latch() {
    let reason = ValidationError::new(ValidationCode::KeyDisabled, "disabled");
    let lost = KeyAccessState::KeyAccessLost {
        since: OffsetDateTime::UNIX_EPOCH,
        reason: reason.clone(),
    };
    let latched = KeyAccessState::RequiresUpdate {
        since: OffsetDateTime::UNIX_EPOCH,
        reason,
    };
    let short = lost
        .data_plane_message_with_latch(Duration::from_secs(6))
        .unwrap();
    assert!(
        short.contains("within 6 seconds") && short.contains("KeyDisabled"),
        "{short}"
    );
    let default = latched.data_plane_message().unwrap();
    assert!(default.contains("more than 30 minutes"), "{default}");
    assert!(KeyAccessState::Healthy.data_plane_message().is_none());
}
