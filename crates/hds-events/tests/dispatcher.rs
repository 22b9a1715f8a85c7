//! The dispatcher against SQLite and PostgreSQL, a fake change source and a webhook receiver
//! on 127.0.0.1: order and batching, retries until the receiver recovers, the cursor kept
//! across a restart, dead-lettering, leases between two dispatchers, filters, services whose
//! keys are not available, and a subscription deleted while its changes are read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures::future::BoxFuture;
use hds_db::Database;
use hds_db::testing::PostgresCluster;
use hds_events::{
    Change, ChangeKind, ChangeSource, DeliverySchema, Dispatcher, DispatcherConfig, EventStore,
    SourceError, SourceService, Subscription, WebhookClient, WebhookConfig,
};
use serde_json::Value;

const WORKSPACE: &str =
    "/subscriptions/s/resourceGroups/g/providers/Microsoft.HealthcareApis/workspaces/ws";
const SERVICE: &str = "svc-1";

#[derive(Default)]
struct FakeSource {
    changes: Mutex<HashMap<String, Vec<Change>>>,
    locked: Mutex<bool>,
    /// A subscription deleted from this store, and a change recorded, while the next
    /// changes are read: a deletion racing a delivery pass.
    delete_while_reading: Mutex<Option<(EventStore, String)>>,
}

impl FakeSource {
    fn add(&self, kind: ChangeKind) -> i64 {
        let mut changes = self.changes.lock().unwrap();
        let feed = changes.entry(SERVICE.to_owned()).or_default();
        let sequence = feed.len() as i64 + 1;
        feed.push(Change {
            sequence,
            timestamp_micros: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64,
            kind,
            study_instance_uid: "1.2.3".into(),
            series_instance_uid: "1.2.3.4".into(),
            sop_instance_uid: format!("1.2.3.4.{sequence}"),
            partition_name: None,
        });
        sequence
    }
}

impl ChangeSource for FakeSource {
    fn services<'a>(
        &'a self,
        workspace_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SourceService>, SourceError>> {
        Box::pin(async move {
            assert!(workspace_id.eq_ignore_ascii_case(WORKSPACE));
            Ok(vec![SourceService {
                service: SERVICE.into(),
                host_name: "127.0.0.1:1/dicom/ws/dicom".into(),
                available: !*self.locked.lock().unwrap(),
            }])
        })
    }

    fn changes_after<'a>(
        &'a self,
        service: &'a str,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Change>, SourceError>> {
        Box::pin(async move {
            let racing = self.delete_while_reading.lock().unwrap().take();
            if let Some((store, id)) = racing {
                assert!(store.delete_subscription(&id).await.unwrap());
                self.add(ChangeKind::Created);
            }
            let changes = self.changes.lock().unwrap();
            Ok(changes
                .get(service)
                .map(|feed| {
                    feed.iter()
                        .filter(|change| change.sequence > after)
                        .take(limit as usize)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default())
        })
    }

    fn latest_sequence<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<i64, SourceError>> {
        Box::pin(async move {
            Ok(self
                .changes
                .lock()
                .unwrap()
                .get(service)
                .map(|feed| feed.len() as i64)
                .unwrap_or(0))
        })
    }

    fn first_since<'a>(
        &'a self,
        service: &'a str,
        since_micros: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, SourceError>> {
        Box::pin(async move {
            Ok(self.changes.lock().unwrap().get(service).and_then(|feed| {
                feed.iter()
                    .find(|change| change.timestamp_micros >= since_micros)
                    .map(|change| change.sequence)
            }))
        })
    }
}

/// A webhook receiver: records each request's events and delivery count; answers
/// `failures` requests with `failure_status` first.
/// Each request's events and `aeg-delivery-count`.
type Received = Arc<Mutex<Vec<(Vec<Value>, String)>>>;

#[derive(Clone, Default)]
struct Receiver {
    received: Received,
    failures: Arc<AtomicUsize>,
    failure_status: Arc<Mutex<u16>>,
}

impl Receiver {
    async fn start(&self) -> String {
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}/hook")
    }

    fn sequences(&self) -> Vec<i64> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(events, _)| events.iter())
            .map(|event| event["data"]["sequenceNumber"].as_i64().unwrap())
            .collect()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    if receiver
        .failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok()
    {
        return StatusCode::from_u16(*receiver.failure_status.lock().unwrap()).unwrap();
    }
    assert!(headers.get("authorization").is_none());
    assert_eq!(headers["aeg-event-type"], "Notification");
    let value: Value = serde_json::from_str(&body).unwrap();
    let events = match value {
        Value::Array(events) => events,
        single => vec![single],
    };
    let count = headers["aeg-delivery-count"].to_str().unwrap().to_owned();
    receiver.received.lock().unwrap().push((events, count));
    StatusCode::OK
}

async fn database(postgres: bool) -> (Option<tempfile::TempDir>, Database) {
    if postgres {
        let cluster = PostgresCluster::shared().expect("test cluster");
        let url = cluster.fresh_database().await.expect("database");
        (None, Database::connect(&url).await.expect("postgres"))
    } else {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("events.db").display());
        (Some(dir), Database::connect(&url).await.expect("sqlite"))
    }
}

fn subscription(url: &str) -> Subscription {
    Subscription {
        id: format!(
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.EventGrid/systemTopics/t/eventSubscriptions/{}",
            "sub"
        ),
        name: "sub".into(),
        workspace_id: WORKSPACE.into(),
        endpoint_url: url.into(),
        schema: DeliverySchema::EventGrid,
        included_event_types: Vec::new(),
        subject_begins_with: String::new(),
        subject_ends_with: String::new(),
        subject_case_sensitive: false,
        max_events_per_batch: 2,
        preferred_batch_kb: 64,
        max_delivery_attempts: 30,
        event_ttl_minutes: 1440,
    }
}

fn fast() -> DispatcherConfig {
    DispatcherConfig {
        idle_interval: Duration::from_millis(20),
        lease: Duration::from_secs(60),
        first_retry: Duration::from_millis(20),
        metrics: hds_metrics::EventDeliveryMetrics::default(),
    }
}

fn dispatcher(store: &EventStore, source: &Arc<FakeSource>) -> Dispatcher {
    Dispatcher::new(
        store.clone(),
        source.clone(),
        WebhookClient::new(&WebhookConfig::default()).unwrap(),
        fast(),
    )
}

/// Steps `dispatcher` until `done` or 5 s pass.
async fn run_until(dispatcher: &Dispatcher, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        if !dispatcher.step().await.unwrap() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn delivers_in_order_retries_and_survives_a_restart(postgres: bool) {
    let (_dir, database) = database(postgres).await;
    let store = EventStore::open(database.clone()).await.unwrap();
    let source = Arc::new(FakeSource::default());
    // A change before the subscription is not delivered.
    source.add(ChangeKind::Created);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let receiver = Receiver::default();
    let url = receiver.start().await;
    store.put_subscription(&subscription(&url)).await.unwrap();
    assert!(
        store
            .workspace_has_subscription(&WORKSPACE.to_uppercase())
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    for _ in 0..3 {
        source.add(ChangeKind::Created);
    }
    source.add(ChangeKind::Deleted);

    // The receiver fails twice: the same first batch comes again, counted, then everything.
    *receiver.failure_status.lock().unwrap() = 503;
    receiver.failures.store(2, Ordering::SeqCst);
    let first = dispatcher(&store, &source);
    run_until(&first, || receiver.sequences().len() >= 4).await;
    assert_eq!(receiver.sequences(), vec![2, 3, 4, 5]);
    {
        let received = receiver.received.lock().unwrap();
        assert_eq!(
            received[0].1, "2",
            "two failed attempts before the first delivery"
        );
        assert_eq!(received[0].0.len(), 2, "batched by maxEventsPerBatch");
        let deleted = &received[1].0[1];
        assert_eq!(
            deleted["eventType"],
            "Microsoft.HealthcareApis.DicomImageDeleted"
        );
        assert_eq!(deleted["topic"], WORKSPACE);
        assert_eq!(deleted["data"]["imageSopInstanceUid"], "1.2.3.4.5");
        assert_eq!(deleted["data"]["partitionName"], "Microsoft.Default");
    }
    assert!(!first.step().await.unwrap(), "nothing left");
    let stats = store.stats(&subscription(&url).id).await.unwrap().unwrap();
    assert_eq!((stats.delivered, stats.dead_lettered), (4, 0));

    // A restart (a new process, its predecessor's leases released) goes on from the cursor.
    first.release_leases().await.unwrap();
    source.add(ChangeKind::Created);
    let second = dispatcher(&store, &source);
    run_until(&second, || receiver.sequences().len() >= 5).await;
    assert_eq!(receiver.sequences(), vec![2, 3, 4, 5, 6]);

    // Without the service's keys nothing goes; with them back, it does.
    *source.locked.lock().unwrap() = true;
    source.add(ChangeKind::Created);
    assert!(!second.step().await.unwrap());
    assert_eq!(receiver.sequences().len(), 5);
    *source.locked.lock().unwrap() = false;
    run_until(&second, || receiver.sequences().len() >= 6).await;
    assert_eq!(receiver.sequences(), vec![2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn delivers_in_order_retries_and_survives_a_restart_on_sqlite() {
    delivers_in_order_retries_and_survives_a_restart(false).await;
}

#[tokio::test]
async fn delivers_in_order_retries_and_survives_a_restart_on_postgres() {
    delivers_in_order_retries_and_survives_a_restart(true).await;
}

async fn dead_letters_and_leases(postgres: bool) {
    let (_dir, database) = database(postgres).await;
    let store = EventStore::open(database.clone()).await.unwrap();
    let source = Arc::new(FakeSource::default());
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let mut limited = subscription(&url);
    limited.max_delivery_attempts = 2;
    limited.max_events_per_batch = 1;
    store.put_subscription(&limited).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    source.add(ChangeKind::Created);
    source.add(ChangeKind::Created);

    // Two attempts fail: the first event is dead-lettered; the second goes through.
    *receiver.failure_status.lock().unwrap() = 500;
    receiver.failures.store(2, Ordering::SeqCst);
    let metrics = hds_metrics::Metrics::new();
    let one = Dispatcher::new(
        store.clone(),
        source.clone(),
        WebhookClient::new(&WebhookConfig::default()).unwrap(),
        DispatcherConfig {
            metrics: metrics.event_deliveries.clone(),
            ..fast()
        },
    );
    let two = dispatcher(&store, &source);
    run_until(&one, || !receiver.sequences().is_empty()).await;
    assert_eq!(receiver.sequences(), vec![2]);
    let stats = store.stats(&limited.id).await.unwrap().unwrap();
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 1));

    // 400 is not retried.
    *receiver.failure_status.lock().unwrap() = 400;
    receiver.failures.store(1, Ordering::SeqCst);
    source.add(ChangeKind::Created);
    source.add(ChangeKind::Created);
    // The other dispatcher does not hold the lease: it delivers nothing.
    for _ in 0..5 {
        assert!(!two.step().await.unwrap());
    }
    run_until(&one, || receiver.sequences().len() >= 2).await;
    assert_eq!(receiver.sequences(), vec![2, 4]);
    let stats = store.stats(&limited.id).await.unwrap().unwrap();
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 2));
    // The same outcomes on /metrics: one retried attempt, then the first event out of retries;
    // the 400 dead-lettered at once; two delivered.
    let scrape = metrics.encode();
    for line in [
        r#"hds_event_delivery_attempts_total{outcome="retried"} 1"#,
        r#"hds_event_delivery_attempts_total{outcome="dead_lettered"} 2"#,
        r#"hds_event_delivery_attempts_total{outcome="delivered"} 2"#,
        r#"hds_events_total{outcome="dead_lettered"} 2"#,
        r#"hds_events_total{outcome="delivered"} 2"#,
    ] {
        assert!(
            scrape.lines().any(|scraped| scraped == line),
            "{line} not in {scrape}"
        );
    }

    // A filter: only deletions.
    let mut deletions = limited.clone();
    deletions.included_event_types = vec!["Microsoft.HealthcareApis.DicomImageDeleted".into()];
    store.put_subscription(&deletions).await.unwrap();
    source.add(ChangeKind::Created);
    source.add(ChangeKind::Deleted);
    run_until(&one, || receiver.sequences().len() >= 3).await;
    assert_eq!(receiver.sequences(), vec![2, 4, 6]);

    // Deleted: no more deliveries, and the workspace has no subscription.
    assert!(store.delete_subscription(&limited.id).await.unwrap());
    source.add(ChangeKind::Deleted);
    assert!(!one.step().await.unwrap());
    assert!(!store.workspace_has_subscription(WORKSPACE).await.unwrap());
}

#[tokio::test]
async fn dead_letters_and_leases_on_sqlite() {
    dead_letters_and_leases(false).await;
}

#[tokio::test]
async fn dead_letters_and_leases_on_postgres() {
    dead_letters_and_leases(true).await;
}

#[tokio::test]
async fn the_handshake_needs_the_validation_code() {
    async fn answer(body: String) -> axum::Json<Value> {
        let events: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            events[0]["eventType"],
            "Microsoft.EventGrid.SubscriptionValidationEvent"
        );
        axum::Json(serde_json::json!({"validationResponse": events[0]["data"]["validationCode"]}))
    }
    async fn wrong(_body: String) -> axum::Json<Value> {
        axum::Json(serde_json::json!({"validationResponse": "nope"}))
    }
    async fn huge(_body: String) -> String {
        "x".repeat(1 << 20)
    }
    let app = axum::Router::new()
        .route("/ok", post(answer))
        .route("/wrong", post(wrong))
        .route("/huge", post(huge));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = WebhookClient::new(&WebhookConfig::default()).unwrap();
    let validate = |path: &'static str| {
        let client = client.clone();
        async move {
            client
                .validate(
                    &format!("http://{address}{path}"),
                    DeliverySchema::EventGrid,
                    "s",
                    WORKSPACE,
                )
                .await
        }
    };
    assert!(validate("/ok").await.is_ok());
    assert!(validate("/wrong").await.is_err());
    assert!(validate("/huge").await.unwrap_err().contains("longer than"));
    assert!(validate("/missing").await.unwrap_err().contains("404"));
}

/// A subscription deleted while a pass reads its changes: the change committed after the
/// deletion is not sent, and the pass ends without error.
async fn nothing_committed_after_a_deletion_is_sent(postgres: bool) {
    let (_dir, database) = database(postgres).await;
    let store = EventStore::open(database).await.unwrap();
    let source = Arc::new(FakeSource::default());
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let subscribed = subscription(&url);
    store.put_subscription(&subscribed).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    source.add(ChangeKind::Created);
    let dispatcher = dispatcher(&store, &source);
    run_until(&dispatcher, || !receiver.sequences().is_empty()).await;
    assert_eq!(receiver.sequences(), vec![1]);

    *source.delete_while_reading.lock().unwrap() = Some((store.clone(), subscribed.id.clone()));
    assert!(!dispatcher.step().await.unwrap());
    assert!(
        source.delete_while_reading.lock().unwrap().is_none(),
        "the pass read the changes"
    );
    for _ in 0..3 {
        dispatcher.step().await.unwrap();
    }
    assert_eq!(
        receiver.sequences(),
        vec![1],
        "nothing sent after the deletion"
    );
}

#[tokio::test]
async fn nothing_committed_after_a_deletion_is_sent_on_sqlite() {
    nothing_committed_after_a_deletion_is_sent(false).await;
}

#[tokio::test]
async fn nothing_committed_after_a_deletion_is_sent_on_postgres() {
    nothing_committed_after_a_deletion_is_sent(true).await;
}

/// Two dispatchers (two nodes) running at once on one database: each event arrives once.
async fn two_nodes_deliver_each_event_once(postgres: bool) {
    let (_dir, database) = database(postgres).await;
    let store = EventStore::open(database.clone()).await.unwrap();
    let source = Arc::new(FakeSource::default());
    let receiver = Receiver::default();
    let url = receiver.start().await;
    store.put_subscription(&subscription(&url)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let nodes = [dispatcher(&store, &source), dispatcher(&store, &source)];
    let tasks: Vec<_> = nodes.iter().map(Dispatcher::spawn).collect();
    for _ in 0..40 {
        source.add(ChangeKind::Created);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while receiver.sequences().len() < 40 {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for task in tasks {
        task.abort();
    }
    assert_eq!(receiver.sequences(), (1..=40).collect::<Vec<i64>>());
}

#[tokio::test]
async fn two_nodes_deliver_each_event_once_on_sqlite() {
    two_nodes_deliver_each_event_once(false).await;
}

#[tokio::test]
async fn two_nodes_deliver_each_event_once_on_postgres() {
    two_nodes_deliver_each_event_once(true).await;
}
