//! The key-access monitor: probes each DICOM service's key on an interval and applies the
//! 30-minute rule.
//!
//! ```text
//!            probe fails                       lost for >= latch (probe fails or succeeds)
//! Healthy ──────────────▶ KeyAccessLost(since) ──────────────────────────▶ RequiresUpdate(since)
//!    ▲                         │                                                 │
//!    └──── probe succeeds ─────┘  (before the latch)                             │
//!    └──────────────────────── revalidate() succeeds ────────────────────────────┘
//! ```
//!
//! A success seen only after the latch has run out does not recover the service: access was,
//! as far as hds could tell, lost for longer than the latch, and the rule asks for an update.
//!
//! Several nodes on one database share one state per service: each node probes on its own
//! interval, and each probe's transition starts from the stored state and stores its result in
//! one transaction. A key disabled is seen by every node's next probe; a latch, a `since` or a
//! revalidation made by one node reaches the others at their next probe (within
//! `probe_interval`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hds_db::{Database, DbError};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::client::KeyVaultClient;
use crate::store::{StateStore, StoredState};
use crate::token::TokenSource;
use crate::url::KeyUrl;
use crate::validate::{ValidationError, probe_key};

/// The data plane's error code while a service's key is not reachable.
pub const CUSTOMER_MANAGED_KEY_ACCESS_LOST: &str = "CustomerManagedKeyAccessLost";

/// Whether a DICOM service can reach its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAccessState {
    /// The last probe succeeded.
    Healthy,
    /// Probes fail since `since`; the service recovers by itself if access comes back before
    /// the latch runs out.
    KeyAccessLost {
        /// When the first failing probe ran.
        since: OffsetDateTime,
        /// Why the last probe failed.
        reason: ValidationError,
    },
    /// Access was lost for longer than the latch: only an update of the DICOM service
    /// ([`KeyAccessMonitor::revalidate`]) brings it back, even once access is restored.
    RequiresUpdate {
        /// When access was first lost.
        since: OffsetDateTime,
        /// Why the last failing probe failed.
        reason: ValidationError,
    },
}

impl KeyAccessState {
    /// The state's name, as persisted and reported: `Healthy`, `KeyAccessLost` or
    /// `RequiresUpdate`.
    pub fn name(&self) -> &'static str {
        match self {
            KeyAccessState::Healthy => "Healthy",
            KeyAccessState::KeyAccessLost { .. } => "KeyAccessLost",
            KeyAccessState::RequiresUpdate { .. } => "RequiresUpdate",
        }
    }

    /// Whether the service may use its keys (only when healthy).
    pub fn is_healthy(&self) -> bool {
        matches!(self, KeyAccessState::Healthy)
    }

    /// Why access is lost, when it is.
    pub fn reason(&self) -> Option<&ValidationError> {
        match self {
            KeyAccessState::Healthy => None,
            KeyAccessState::KeyAccessLost { reason, .. }
            | KeyAccessState::RequiresUpdate { reason, .. } => Some(reason),
        }
    }

    /// What the data plane says in its 500 [`CUSTOMER_MANAGED_KEY_ACCESS_LOST`] answer, with
    /// the default latch (30 minutes).
    pub fn data_plane_message(&self) -> Option<String> {
        self.data_plane_message_with_latch(MonitorConfig::default().lost_access_latch)
    }

    /// What the data plane says in its 500 [`CUSTOMER_MANAGED_KEY_ACCESS_LOST`] answer, naming
    /// the latch the monitor was configured with.
    pub fn data_plane_message_with_latch(&self, latch: Duration) -> Option<String> {
        let latch = duration_words(latch);
        match self {
            KeyAccessState::Healthy => None,
            KeyAccessState::KeyAccessLost { reason, .. } => Some(format!(
                "The DICOM service cannot access its customer-managed key ({}). Restore access to the key; the service recovers by itself within {latch} of losing access.",
                reason.code
            )),
            KeyAccessState::RequiresUpdate { reason, .. } => Some(format!(
                "The DICOM service lost access to its customer-managed key for more than {latch} ({}). Restore access to the key, then update the DICOM service to bring it back.",
                reason.code
            )),
        }
    }
}

/// A latch in words: "30 minutes", "1 minute", or seconds when it is not whole minutes.
fn duration_words(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match (seconds / 60, seconds % 60) {
        (1, 0) => "1 minute".to_owned(),
        (minutes, 0) if minutes > 0 => format!("{minutes} minutes"),
        _ if seconds == 1 => "1 second".to_owned(),
        _ => format!("{seconds} seconds"),
    }
}

/// What ties a DICOM service to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBinding {
    /// The key URL as configured: versioned, or versionless (the latest version is used).
    pub key_url: KeyUrl,
    /// The principal id of the managed identity that reaches the key.
    pub principal_id: String,
    /// The DICOM service's tenant.
    pub tenant_id: String,
}

/// Where the monitor takes the time from; tests move a manual clock.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A boxed probe future: the versioned key id in use, or why access failed.
pub type ProbeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<KeyUrl, ValidationError>> + Send + 'a>>;

/// One probe of a service's key. [`VaultKeyProbe`] is the real one; tests substitute others.
pub trait KeyProbe: Send + Sync {
    /// Checks that `binding`'s identity can use its key now; returns the key version in use
    /// (the latest, for a versionless URL).
    fn probe<'a>(&'a self, binding: &'a KeyBinding) -> ProbeFuture<'a>;
}

/// The real probe: a fresh identity token, get the key (enabled, within nbf/exp), and a wrap
/// and unwrap of a random value.
pub struct VaultKeyProbe {
    client: KeyVaultClient,
    tokens: Arc<dyn TokenSource>,
    clock: Arc<dyn Clock>,
}

impl VaultKeyProbe {
    /// A probe calling vaults with `client` and `tokens`.
    pub fn new(
        client: KeyVaultClient,
        tokens: Arc<dyn TokenSource>,
        clock: Arc<dyn Clock>,
    ) -> VaultKeyProbe {
        VaultKeyProbe {
            client,
            tokens,
            clock,
        }
    }
}

impl KeyProbe for VaultKeyProbe {
    fn probe<'a>(&'a self, binding: &'a KeyBinding) -> ProbeFuture<'a> {
        Box::pin(async move {
            let now = self.clock.now().unix_timestamp();
            let facts = probe_key(
                &self.client,
                self.tokens.as_ref(),
                &binding.key_url,
                &binding.principal_id,
                now,
                |_| Ok(()),
            )
            .await?;
            Ok(facts.kid)
        })
    }
}

/// How often to probe and when to latch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Time between probes of each service (`--cmk-probe-interval`, default 60 s).
    pub probe_interval: Duration,
    /// How long access may be lost before the service needs an update
    /// (`--cmk-lost-access-latch`, default 30 min).
    pub lost_access_latch: Duration,
    /// At most this many probes run at once.
    pub max_concurrent_probes: usize,
}

impl Default for MonitorConfig {
    fn default() -> MonitorConfig {
        MonitorConfig {
            probe_interval: Duration::from_secs(60),
            lost_access_latch: Duration::from_secs(30 * 60),
            max_concurrent_probes: 8,
        }
    }
}

/// Why a monitor operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The service is not registered.
    #[error("DICOM service {0} has no customer-managed key registered with the monitor")]
    NotRegistered(String),
    /// The probe of a revalidation failed: the state stays as it was (or becomes lost).
    #[error("the key could not be used: {0}")]
    AccessFailed(ValidationError),
    /// The state could not be read or written.
    #[error("key access state storage: {0}")]
    Storage(#[from] DbError),
}

/// Called with the service key and the new versioned key id when a versionless key's latest
/// version changes (the caller rewraps the service root key under it).
pub type NewVersionListener = Arc<dyn Fn(&str, &KeyUrl) + Send + Sync>;

struct ServiceEntry {
    binding: Mutex<KeyBinding>,
    sender: watch::Sender<KeyAccessState>,
    latest_kid: Mutex<Option<String>>,
    /// When the last probe (of this process) completed: resource health's `reportedTime`.
    last_checked: Mutex<Option<OffsetDateTime>>,
    /// Serializes probes of one service (the background loop and `probe_now` may overlap).
    probe_lock: tokio::sync::Mutex<()>,
}

/// The key-access monitor of every DICOM service with a customer-managed key.
pub struct KeyAccessMonitor {
    config: MonitorConfig,
    probe: Arc<dyn KeyProbe>,
    clock: Arc<dyn Clock>,
    store: StateStore,
    services: Mutex<HashMap<String, Arc<ServiceEntry>>>,
    /// Behind a lock so that the listener, which usually needs the monitor itself (through
    /// whoever owns the keyrings), can be set once the monitor is shared.
    new_version_listener: Mutex<Option<NewVersionListener>>,
}

impl std::fmt::Debug for KeyAccessMonitor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeyAccessMonitor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Metrics read each registered service's state at each scrape, by its key (the internal
/// service id: no name, no PHI).
impl hds_metrics::KeyAccessStates for KeyAccessMonitor {
    fn key_access_states(&self) -> Vec<(String, &'static str)> {
        let services = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        services
            .iter()
            .map(|(service_key, entry)| (service_key.clone(), entry.sender.borrow().name()))
            .collect()
    }
}

impl KeyAccessMonitor {
    /// A monitor keeping its states in `database` (applying the `cmk` migrations).
    pub async fn open(
        database: Database,
        config: MonitorConfig,
        probe: Arc<dyn KeyProbe>,
        clock: Arc<dyn Clock>,
    ) -> Result<KeyAccessMonitor, MonitorError> {
        let store = StateStore::open(database).await?;
        Ok(KeyAccessMonitor {
            config,
            probe,
            clock,
            store,
            services: Mutex::new(HashMap::new()),
            new_version_listener: Mutex::new(None),
        })
    }

    /// Calls `listener` when a versionless key's latest version differs from the one last
    /// seen (also at the first probe of a service, when none was seen yet). The listener must
    /// not block; it compares the version with the one its wrapped key names and rewraps if
    /// they differ.
    pub fn with_new_version_listener(self, listener: NewVersionListener) -> KeyAccessMonitor {
        self.set_new_version_listener(listener);
        self
    }

    /// As [`KeyAccessMonitor::with_new_version_listener`], on a monitor already shared;
    /// replaces any listener set before.
    pub fn set_new_version_listener(&self, listener: NewVersionListener) {
        *self
            .new_version_listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(listener);
    }

    /// The configuration.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    fn entry(&self, service_key: &str) -> Result<Arc<ServiceEntry>, MonitorError> {
        let services = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        services
            .get(service_key)
            .cloned()
            .ok_or_else(|| MonitorError::NotRegistered(service_key.to_owned()))
    }

    /// Starts monitoring `service_key` (or replaces its binding), resuming the persisted
    /// state if there is one. Returns the current state.
    pub async fn register(
        &self,
        service_key: &str,
        binding: KeyBinding,
    ) -> Result<KeyAccessState, MonitorError> {
        let stored = self.store.load(service_key).await?;
        let existing = {
            let services = self
                .services
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            services.get(service_key).cloned()
        };
        if let Some(entry) = existing {
            let mut current = entry
                .binding
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !current.key_url.same_key(&binding.key_url) {
                *entry
                    .latest_kid
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
            }
            *current = binding;
            return Ok(entry.sender.borrow().clone());
        }
        let (state, latest_kid) = match stored {
            Some(stored) => (stored.state, stored.latest_kid),
            None => (KeyAccessState::Healthy, None),
        };
        let latest_kid = latest_kid
            .filter(|kid| KeyUrl::parse(kid).is_ok_and(|kid| kid.same_key(&binding.key_url)));
        let entry = Arc::new(ServiceEntry {
            binding: Mutex::new(binding),
            sender: watch::Sender::new(state.clone()),
            latest_kid: Mutex::new(latest_kid),
            last_checked: Mutex::new(None),
            probe_lock: tokio::sync::Mutex::new(()),
        });
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = services
            .entry(service_key.to_owned())
            .or_insert(entry)
            .clone();
        let state = entry.sender.borrow().clone();
        Ok(state)
    }

    /// Stops monitoring `service_key` and forgets its persisted state (its customer-managed
    /// key was removed, or the service deleted). Subscribers see their channel close.
    pub async fn unregister(&self, service_key: &str) -> Result<(), MonitorError> {
        let removed = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(service_key);
        drop(removed);
        self.store.delete(service_key).await?;
        Ok(())
    }

    /// Stops monitoring `service_key` in this process only, keeping its persisted state
    /// (another node deleted the service and owns its cleanup). Subscribers see their channel
    /// close.
    pub fn forget(&self, service_key: &str) {
        let removed = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(service_key);
        drop(removed);
    }

    /// What `service_key` is registered with (its key URL and the principal that reaches it),
    /// if it is registered.
    pub fn binding(&self, service_key: &str) -> Option<KeyBinding> {
        self.entry(service_key).ok().map(|entry| {
            entry
                .binding
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
        })
    }

    /// When `service_key`'s last probe completed, if one did since it was registered.
    pub fn last_checked(&self, service_key: &str) -> Option<OffsetDateTime> {
        self.entry(service_key).ok().and_then(|entry| {
            *entry
                .last_checked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        })
    }

    /// The current state, if `service_key` is registered.
    pub fn state(&self, service_key: &str) -> Option<KeyAccessState> {
        self.entry(service_key)
            .ok()
            .map(|entry| entry.sender.borrow().clone())
    }

    /// The state every node shares, as last stored by any node's probe (this process's copy,
    /// [`KeyAccessMonitor::state`], follows it at each of its own probes). `None` when
    /// `service_key` is not registered here.
    pub async fn shared_state(
        &self,
        service_key: &str,
    ) -> Result<Option<KeyAccessState>, MonitorError> {
        let Some(local) = self.state(service_key) else {
            return Ok(None);
        };
        Ok(Some(
            self.store
                .load(service_key)
                .await?
                .map_or(local, |stored| stored.state),
        ))
    }

    /// A receiver that sees every change of `service_key`'s state (the data plane drops its
    /// unwrapped keys when it turns unhealthy).
    pub fn subscribe(&self, service_key: &str) -> Option<watch::Receiver<KeyAccessState>> {
        self.entry(service_key)
            .ok()
            .map(|entry| entry.sender.subscribe())
    }

    /// The versioned key id last seen for `service_key` (the latest version, for a
    /// versionless key URL).
    pub fn current_key_id(&self, service_key: &str) -> Option<String> {
        self.entry(service_key).ok().and_then(|entry| {
            entry
                .latest_kid
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
        })
    }

    /// Probes `service_key` now and applies the result. Returns the new state.
    pub async fn probe_now(&self, service_key: &str) -> Result<KeyAccessState, MonitorError> {
        let entry = self.entry(service_key)?;
        let (state, _) = self.probe_entry(service_key, &entry, false).await?;
        Ok(state)
    }

    /// After the DICOM service was updated (and its key validated): probes, and on success
    /// returns the service to `Healthy` whatever its state, latched or not. On failure the
    /// state is updated as by any failing probe and the failure returned.
    pub async fn revalidate(&self, service_key: &str) -> Result<KeyAccessState, MonitorError> {
        let entry = self.entry(service_key)?;
        match self.probe_entry(service_key, &entry, true).await? {
            (state, None) => Ok(state),
            (_, Some(failure)) => Err(MonitorError::AccessFailed(failure)),
        }
    }

    /// Probes every registered service each `probe_interval` until `shutdown` completes.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(self.config.probe_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = async {
                    ticker.tick().await;
                    self.probe_all().await;
                } => {}
            }
        }
    }

    /// Probes every registered service once.
    pub async fn probe_all(&self) {
        let keys: Vec<String> = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .cloned()
            .collect();
        futures::stream::iter(keys)
            .for_each_concurrent(self.config.max_concurrent_probes.max(1), |service_key| async move {
                if let Err(error) = self.probe_now(&service_key).await {
                    tracing::warn!(service = %service_key, %error, "key access probe could not complete");
                }
            })
            .await;
    }

    /// One probe and its transition. Returns the new state and the probe's failure, if any.
    async fn probe_entry(
        &self,
        service_key: &str,
        entry: &ServiceEntry,
        revalidating: bool,
    ) -> Result<(KeyAccessState, Option<ValidationError>), MonitorError> {
        let _serialized = entry.probe_lock.lock().await;
        let binding = entry
            .binding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let outcome = self.probe.probe(&binding).await;
        // Stored to the millisecond: the state every node reads back is the one applied here.
        let now = truncate_to_millis(self.clock.now());
        *entry
            .last_checked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(now);
        let mut kid_changed = None;
        if let Ok(kid) = &outcome {
            let mut latest = entry
                .latest_kid
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let kid_text = kid.to_string();
            if latest.as_deref() != Some(kid_text.as_str()) {
                *latest = Some(kid_text);
                kid_changed = Some(kid.clone());
            }
        }
        let latest_kid = entry
            .latest_kid
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        // The transition starts from the state all nodes share, not from this process's
        // copy: another node's probe, latch or revalidation counts here too.
        let latch = self.config.lost_access_latch;
        let probed = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
        let (_, stored) = self
            .store
            .update(service_key, now, |shared| StoredState {
                state: transition(
                    &shared.map_or(KeyAccessState::Healthy, |shared| shared.state.clone()),
                    probed,
                    now,
                    latch,
                    revalidating,
                ),
                latest_kid: latest_kid
                    .or_else(|| shared.and_then(|shared| shared.latest_kid.clone())),
            })
            .await?;
        let next = stored.state;
        let current = entry.sender.borrow().clone();
        if next != current {
            log_transition(service_key, &current, &next);
            entry.sender.send_replace(next.clone());
        }
        let listener = self
            .new_version_listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let (Some(kid), Some(listener)) = (&kid_changed, listener)
            && !binding.key_url.is_versioned()
        {
            listener(service_key, kid);
        }
        Ok((next, outcome.err()))
    }
}

/// `moment` without its sub-millisecond part, as the state store keeps it.
fn truncate_to_millis(moment: OffsetDateTime) -> OffsetDateTime {
    let nanos = moment.unix_timestamp_nanos();
    OffsetDateTime::from_unix_timestamp_nanos(nanos - nanos.rem_euclid(1_000_000)).unwrap_or(moment)
}

/// The 30-minute rule as a pure function of the current state and a probe's outcome.
fn transition(
    current: &KeyAccessState,
    outcome: Result<(), ValidationError>,
    now: OffsetDateTime,
    latch: Duration,
    revalidating: bool,
) -> KeyAccessState {
    let latch = time::Duration::try_from(latch).unwrap_or(time::Duration::MAX);
    let latched = |since: OffsetDateTime| now - since >= latch;
    match (current, outcome) {
        (_, Ok(())) if revalidating => KeyAccessState::Healthy,
        (KeyAccessState::Healthy, Ok(())) => KeyAccessState::Healthy,
        (KeyAccessState::KeyAccessLost { since, reason }, Ok(())) => {
            if latched(*since) {
                KeyAccessState::RequiresUpdate {
                    since: *since,
                    reason: reason.clone(),
                }
            } else {
                KeyAccessState::Healthy
            }
        }
        (KeyAccessState::RequiresUpdate { .. }, Ok(())) => current.clone(),
        (KeyAccessState::Healthy, Err(reason)) => {
            if latched(now) {
                KeyAccessState::RequiresUpdate { since: now, reason }
            } else {
                KeyAccessState::KeyAccessLost { since: now, reason }
            }
        }
        (KeyAccessState::KeyAccessLost { since, .. }, Err(reason)) => {
            if latched(*since) {
                KeyAccessState::RequiresUpdate {
                    since: *since,
                    reason,
                }
            } else {
                KeyAccessState::KeyAccessLost {
                    since: *since,
                    reason,
                }
            }
        }
        (KeyAccessState::RequiresUpdate { since, .. }, Err(reason)) => {
            KeyAccessState::RequiresUpdate {
                since: *since,
                reason,
            }
        }
    }
}

fn log_transition(service_key: &str, from: &KeyAccessState, to: &KeyAccessState) {
    match to {
        KeyAccessState::Healthy => {
            tracing::info!(service = %service_key, from = from.name(), "customer-managed key access restored");
        }
        KeyAccessState::KeyAccessLost { reason, .. }
        | KeyAccessState::RequiresUpdate { reason, .. } => {
            tracing::warn!(
                service = %service_key,
                from = from.name(),
                to = to.name(),
                code = reason.code.as_str(),
                "customer-managed key access lost"
            );
        }
    }
}

#[cfg(test)]
mod tests;
