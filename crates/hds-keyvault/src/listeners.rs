//! The vaults' HTTPS listeners.
//!
//! Azure SDKs address a vault by host (they parse every `kid` as
//! `https://host[:port]/keys/{name}/{version}`) and send tokens only over HTTPS. On the loopback
//! default each vault therefore has its own listener on the port chosen when the vault was
//! created (kept in the store, so key ids written into other resources stay valid across
//! restarts); with a DNS domain one listener serves every vault, routed by `Host`
//! ([`host_routed_router`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;

/// Ports given to new vaults, each held by the bound socket that proved it free until the
/// vault's listener takes it. A port proved free and let go could be taken meanwhile by any
/// socket of the machine: an outgoing connection's local port comes from the same ephemeral
/// range a vault's port is picked from.
static RESERVED_PORTS: Mutex<BTreeMap<SocketAddr, TcpListener>> = Mutex::new(BTreeMap::new());

/// Holds `listener` (bound, listening) for the vault listener that will serve its address.
pub(crate) fn reserve_port(listener: TcpListener) -> std::io::Result<u16> {
    let address = listener.local_addr()?;
    RESERVED_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(address, listener);
    Ok(address.port())
}

/// Lets go of the port reserved for `address` (its vault was not created after all).
pub(crate) fn release_port(address: SocketAddr) {
    drop(take_reserved(address));
}

/// The socket reserved for `address`, if any; it is the caller's from now on.
fn take_reserved(address: SocketAddr) -> Option<TcpListener> {
    RESERVED_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(&address)
}

use crate::error::VaultError;
use crate::http::{DataPlaneState, VaultSelector, data_plane_router};
use crate::model::Vault;

/// How long a stopping listener lets requests in flight finish.
const GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(5);

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// The vault's port is taken or not bindable.
    #[error(
        "cannot listen for vault '{vault}' on {address}: {source}; free the port or delete and recreate the vault"
    )]
    Bind {
        /// The vault.
        vault: String,
        /// The address.
        address: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The vault has no port (it was created under domain addressing).
    #[error("vault '{0}' has no listener port: it was created with domain addressing")]
    NoPort(String),
    /// Reading the vaults failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

struct RunningListener {
    handle: Handle,
    address: SocketAddr,
}

/// One HTTPS listener per vault (loopback addressing).
pub struct VaultListeners {
    state: DataPlaneState,
    tls: RustlsConfig,
    bind_address: IpAddr,
    running: Mutex<HashMap<String, RunningListener>>,
}

impl VaultListeners {
    /// Listeners on `bind_address` (normally 127.0.0.1) serving with `tls` (from
    /// `hds_tls::LocalCa::server_config`).
    pub fn new(
        state: DataPlaneState,
        tls: Arc<rustls::ServerConfig>,
        bind_address: IpAddr,
    ) -> VaultListeners {
        VaultListeners {
            state,
            tls: RustlsConfig::from_config(tls),
            bind_address,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a listener for every stored vault that has a port and no listener yet (a vault
    /// created under domain addressing has none: the main listener routes to it by host).
    pub async fn start_all(&self) -> Result<Vec<(String, SocketAddr)>, ListenerError> {
        let mut started = Vec::new();
        for vault in self.state.service.list_vaults().await? {
            if vault.port.is_none() {
                continue;
            }
            let address = self.start(&vault)?;
            started.push((vault.name, address));
        }
        Ok(started)
    }

    /// Starts the listener of `vault` (nothing if it runs already). Returns its address.
    pub fn start(&self, vault: &Vault) -> Result<SocketAddr, ListenerError> {
        let key = vault.name.to_ascii_lowercase();
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(listener) = running.get(&key) {
            return Ok(listener.address);
        }
        let port = vault
            .port
            .ok_or_else(|| ListenerError::NoPort(vault.name.clone()))?;
        let address = SocketAddr::new(self.bind_address, port);
        let bind_error = |source| ListenerError::Bind {
            vault: vault.name.clone(),
            address,
            source,
        };
        // The socket that proved the port free when the vault was created, if this process
        // created it; else a new one.
        let listener = match take_reserved(address) {
            Some(listener) => listener,
            None => TcpListener::bind(address).map_err(bind_error)?,
        };
        listener.set_nonblocking(true).map_err(bind_error)?;
        let router =
            data_plane_router(self.state.clone(), VaultSelector::Fixed(vault.name.clone()));
        let handle = Handle::new();
        let server =
            axum_server::from_tcp_rustls(listener, self.tls.clone()).handle(handle.clone());
        let vault_name = vault.name.clone();
        tokio::spawn(async move {
            if let Err(error) = server
                .serve(router.into_make_service_with_connect_info::<SocketAddr>())
                .await
            {
                tracing::error!(vault = %vault_name, %error, "vault listener stopped");
            }
        });
        tracing::info!(vault = %vault.name, %address, "vault listener started");
        running.insert(key, RunningListener { handle, address });
        Ok(address)
    }

    /// Stops the listener of a vault (after deleting it, say).
    pub fn stop(&self, vault_name: &str) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(listener) = running.remove(&vault_name.to_ascii_lowercase()) {
            listener.handle.graceful_shutdown(Some(GRACEFUL_SHUTDOWN));
        }
    }

    /// The running listeners' addresses by vault (lowercase) name.
    pub fn addresses(&self) -> HashMap<String, SocketAddr> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        running
            .iter()
            .map(|(name, listener)| (name.clone(), listener.address))
            .collect()
    }

    /// Stops every listener, letting requests in flight finish.
    pub fn shutdown(&self) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (_, listener) in running.drain() {
            listener.handle.graceful_shutdown(Some(GRACEFUL_SHUTDOWN));
        }
    }

    /// Starts every vault's listener, runs until `shutdown` completes, then stops them.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) -> Result<(), ListenerError> {
        self.start_all().await?;
        shutdown.await;
        self.shutdown();
        Ok(())
    }
}

impl Drop for VaultListeners {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The router for domain addressing: serve it (over HTTPS, with connect info) on one listener
/// whose certificate covers `*.vault.{domain}`.
pub fn host_routed_router(state: DataPlaneState, domain: &str) -> Router {
    data_plane_router(
        state,
        VaultSelector::ByHost {
            domain: domain.to_owned(),
        },
    )
}
