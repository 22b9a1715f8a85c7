//! `hds up`: open the data dir, assemble the services, serve until SIGINT/SIGTERM.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use hds_blob::BlobStore;
use hds_crypto::root::RootKey;
use hds_dicomweb::{DicomWebConfig, DicomWebState, StaticServices};
use hds_db::Database;
use hds_identity::{Identity, IdentityConfig};
use hds_index::{Index, PlaintextIndexCipher};
use hds_keyvault::{
    DataPlaneState, KeyVaultService, ServiceConfig as VaultServiceConfig, VaultAddressing, VaultListeners,
};
use hds_tls::LocalCa;
use tower_http::trace::TraceLayer;

use crate::access::IdentityDicomAccess;
use crate::cli::UpOptions;
use crate::logging;
use crate::vault_access::IdentityVaultAccess;

/// The workspace and service `hds up` serves until the control plane creates others.
const DEFAULT_WORKSPACE: &str = "default";
const DEFAULT_SERVICE: &str = "dicom";

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub async fn run(options: UpOptions) -> anyhow::Result<()> {
    let data_dir = &options.data_dir;
    create_private_dir(data_dir)?;
    let root_key = RootKey::load_or_create(&data_dir.join("root.key")).context("loading the root key")?;
    let certificate_authority =
        LocalCa::load_or_create(&data_dir.join("tls"), &root_key).context("loading the local CA")?;

    let root_key = Arc::new(root_key);
    let scheme = if options.http { "http" } else { "https" };
    let public_url = options
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", options.listen))
        .trim_end_matches('/')
        .to_owned();

    let database_url = match options.index.as_str() {
        "sqlite" => format!("sqlite:{}", data_dir.join("index.db").display()),
        url => url.to_owned(),
    };
    let database = Database::connect(&database_url).await.context("opening the database")?;
    let identity = Identity::open(database.clone(), root_key.clone(), IdentityConfig::new(&public_url))
        .await
        .context("opening the identity service")?;
    let bootstrap = identity.bootstrap(data_dir).await.context("bootstrapping the tenant and admin")?;
    let index = Index::open(database.clone(), Arc::new(PlaintextIndexCipher))
        .await
        .context("opening the index")?;
    let blobs = BlobStore::local(&data_dir.join("blobs")).context("opening the blob store")?;

    // Key vaults: each on its own HTTPS listener (the Azure SDKs address vaults by host).
    let vault_service = Arc::new(
        KeyVaultService::open(
            database.clone(),
            root_key.clone(),
            VaultServiceConfig { addressing: VaultAddressing::Loopback { address: options.listen.ip() } },
        )
        .await
        .context("opening the key vault service")?,
    );
    let vault_listeners = VaultListeners::new(
        DataPlaneState {
            service: vault_service.clone(),
            access: Arc::new(IdentityVaultAccess { identity: identity.clone() }),
            token_authority: public_url.clone(),
        },
        certificate_authority.server_config(&[]).context("issuing the vault certificate")?,
        options.listen.ip(),
    );
    let vaults = vault_listeners.start_all().await.context("starting the key vault listeners")?;

    let default_service_id = format!(
        "{}/providers/Microsoft.HealthcareApis/workspaces/{DEFAULT_WORKSPACE}/dicomservices/{DEFAULT_SERVICE}",
        bootstrap.resource_group_id
    );
    let services = StaticServices::default().with(DEFAULT_WORKSPACE, DEFAULT_SERVICE, &default_service_id);
    let dicomweb = hds_dicomweb::router(DicomWebState {
        index,
        blobs,
        services: Arc::new(services),
        access: Arc::new(IdentityDicomAccess { identity: identity.clone() }),
        config: Arc::new(DicomWebConfig { max_request_bytes: options.max_request_bytes, scheme }),
    });
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(identity.router())
        .merge(dicomweb)
        .layer(TraceLayer::new_for_http().make_span_with(logging::request_span));

    // Bind only now that everything is ready: a client that connects is served at once.
    let listener = std::net::TcpListener::bind(options.listen)
        .with_context(|| format!("binding {}", options.listen))?;
    listener.set_nonblocking(true)?;
    println!("hds is ready");
    println!("  DICOMweb:  {public_url}/dicom/{DEFAULT_WORKSPACE}/{DEFAULT_SERVICE}/v2/");
    println!("  tokens:    {public_url}/{}/oauth2/v2.0/token", bootstrap.tenant_id);
    println!("  admin:     {}", bootstrap.admin_credentials_path.display());
    for (name, address) in &vaults {
        println!("  vault {name}: https://{address}/");
    }
    println!("  CA:        {}", certificate_authority.ca_pem_path().display());
    println!("  data dir:  {}", data_dir.display());

    let handle = axum_server::Handle::new();
    let shutdown_handle = handle.clone();
    tokio::spawn(async move {
        wait_for_shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown_handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let service = app.into_make_service();
    if options.http {
        axum_server::from_tcp(listener).handle(handle).serve(service).await?;
    } else {
        let tls = certificate_authority.server_config(&[]).context("issuing the server certificate")?;
        let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
        axum_server::from_tcp_rustls(listener, config).handle(handle).serve(service).await?;
    }
    vault_listeners.shutdown();
    println!("hds stopped");
    Ok(())
}

/// Creates `path` if needed and makes it private to this user: it holds the root key.
fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(())
}

async fn wait_for_shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
