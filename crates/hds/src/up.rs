//! `hds up`: open the data dir, assemble the services, serve until SIGINT/SIGTERM.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use hds_arm::{Arm, ArmConfig, ResourceId, Subscription};
use hds_blob::BlobStore;
use hds_cmk::{
    CachingTokenSource, ClientConfig, EntraApplication, EntraTokenSource, KeyAccessMonitor,
    KeyValidator, KeyVaultClient, MonitorConfig, RoutedTokenSource, SystemClock, TokenDestinations,
    TokenSource, VaultDirectory, VaultKeyProbe,
};
use hds_db::Database;
use hds_dicom_service::{DicomHost, DicomHostParts, ServiceIds};
use hds_dicomweb::{DicomWebConfig, DicomWebState, MultipartLimits};
use hds_identity::{
    AdminCredentials, ExternalIssuer, Identity, IdentityConfig, MANAGEMENT_AUDIENCE,
};
use hds_index::{Index, ServiceKeyrings};
use hds_keyvault::{
    DataPlaneState, KeyVaultService, PinSource, Pkcs11Config, ServiceConfig as VaultServiceConfig,
    VaultAddressing, VaultListeners,
};
use hds_providers::ProviderDependencies;
use hds_tls::LocalCa;
use tower_http::trace::TraceLayer;

use crate::access::IdentityDicomAccess;
use crate::adapters::{HostedVaults, ManagedIdentityTokens, VaultListenerEvents};
use crate::cli::UpOptions;
use crate::listener_limits::{self, InFlightRequests, LimitedAcceptor, ListenerLimits};
use crate::logging;
use crate::seed_flow::{self, SeedNames};
use crate::vault_access::IdentityVaultAccess;

/// The workspace and service of the seed's flow.
const DEFAULT_WORKSPACE: &str = "default";
const DEFAULT_SERVICE: &str = "dicom";

/// How often a node on PostgreSQL reads the DICOM services from the database, to serve those
/// other nodes created, changed or deleted (docs/deploy.md, "N nodes").
const SERVICE_REFRESH: Duration = Duration::from_secs(5);

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub async fn run(options: UpOptions) -> anyhow::Result<()> {
    // Catch SIGTERM from the start: a stop that arrives while starting still stops cleanly.
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for SIGINT")?;
    let data_dir = &options.data_dir;
    // The blob store's URL and credential sources next: like the protector, a wrong value
    // stops the start before anything is created.
    let remote_blobs = crate::blob_store::open_remote(options.blob_store.as_deref())?;
    // The protector first: a wrong flag, passphrase, PIN or token stops the start before the
    // data dir is created or written.
    let root_key_protector = crate::root_key::protector_for_up(data_dir, &options.root_key)?;
    create_private_dir(data_dir)?;
    let root_key = Arc::new(root_key_protector.open_or_create(data_dir)?);
    drop(root_key_protector);
    let certificate_authority = LocalCa::load_or_create(&data_dir.join("tls"), &root_key)
        .context("loading the local CA")?;
    let scheme = if options.http { "http" } else { "https" };
    let public_url = options
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", options.listen))
        .trim_end_matches('/')
        .to_owned();
    // One certificate for the main listener and every vault, covering the hosts of this start.
    let served = crate::tls::served_certificate(&options, &certificate_authority, &public_url)?;
    let tls = served
        .certificate
        .server_config()
        .context("configuring TLS")?;

    // Recorded whether or not anything scrapes them: the cost is a few atomic additions.
    let metrics = hds_metrics::Metrics::new();

    // One database for everything: identities, vaults, ARM resources, the index, key state.
    let database_url = match options.index.as_str() {
        "sqlite" => format!("sqlite:{}", data_dir.join("index.db").display()),
        url => url.to_owned(),
    };
    let durable = options.durability == crate::cli::Durability::Full;
    if !durable {
        tracing::warn!("--durability relaxed: acknowledged writes are lost on power loss");
    }
    let connect_options = if durable {
        hds_db::ConnectOptions::default()
    } else {
        hds_db::ConnectOptions::relaxed()
    };
    let database = Database::connect_with(&database_url, connect_options)
        .await
        .context("opening the database")?;
    // Nodes starting together on one PostgreSQL take turns from here to the end of the seed's
    // flow: one creates the tenant, the admin and the seed's resources; the others find them
    // (and serve them, since they list the DICOM services only after the holder is done).
    let bootstrap_lock = database
        .cluster_lock(hds_db::ClusterLock::Bootstrap)
        .await
        .context("waiting for other nodes' start-up")?;
    // Key operations and role changes are recorded, chained under a key from the root key.
    let audit = hds_audit::AuditLog::open(database.clone(), &root_key)
        .await
        .context("opening the audit log")?;
    let audit_queue = hds_audit::AuditQueue::spawn(audit.clone());
    let mut identity_config = IdentityConfig::new(&public_url);
    for trusted in &options.trusted_issuers {
        identity_config = identity_config.with_external_issuer(external_issuer(trusted)?);
    }
    let identity = Identity::open(database.clone(), root_key.clone(), identity_config)
        .await
        .context("opening the identity service")?;
    let bootstrap = identity
        .bootstrap(data_dir)
        .await
        .context("bootstrapping the tenant and admin")?;

    // Every DICOM service's index values are tokenized and sealed under its own keys.
    let keyrings = ServiceKeyrings::default();
    let index = Index::open_with_metrics(
        database.clone(),
        Arc::new(keyrings.clone()),
        metrics.group_commits.clone(),
    )
    .await
    .context("opening the index")?;
    // Reindex operations of extended query tags: this process takes any whose lease is free
    // (its own before a restart too, once that lease expires) and continues from its cursor.
    let operation_worker = index.spawn_operation_worker(Duration::from_secs(1));
    // Studies whose rows do not know their ModalitiesInStudy (stored by an older hds, or whose
    // series were deleted) are given them, so every study search reads one row per study.
    let modalities_filler = index.spawn_modalities_filler(Duration::from_secs(600));
    let blobs = match remote_blobs {
        Some(remote) => remote.checked().await?,
        None => {
            let mut blob_options = hds_blob::LocalOptions::default();
            blob_options.sync_writes = durable;
            BlobStore::local_with(&data_dir.join("blobs"), blob_options)
                .context("opening the blob store")?
        }
    };
    // Blobs of stores a crash interrupted, and study keys without studies.
    let sweeper = hds_backup::Sweeper::new(database.clone(), blobs.clone(), options.orphan_grace)
        .with_metrics(metrics.orphan_sweeps.clone())
        .spawn(options.sweep_interval);

    // Exports to customers' blob containers: the same lease rules, one step at a time.
    let export_worker = hds_archive::ExportWorker::new(
        hds_archive::Archive::new(index.clone(), blobs.clone()),
        keyrings.clone(),
    )
    .spawn(Duration::from_secs(1));

    // Key vaults: each on its own HTTPS listener (the Azure SDKs address vaults by host).
    let pkcs11 = match &options.pkcs11_module {
        Some(module_path) => Some(Pkcs11Config {
            module_path: module_path.clone(),
            token_label: options.pkcs11_token_label.clone(),
            user_pin: PinSource::File(
                options
                    .pkcs11_pin_file
                    .clone()
                    .context("--pkcs11-module needs --pkcs11-pin-file")?,
            ),
        }),
        None => None,
    };
    let vault_service = Arc::new(
        KeyVaultService::open_with_pkcs11(
            database.clone(),
            root_key.clone(),
            VaultServiceConfig {
                addressing: match (options.vault_address, options.vault_ports) {
                    _ if options.vault_domain.is_some() => VaultAddressing::Domain {
                        domain: options.vault_domain.clone().unwrap_or_default(),
                        port: public_port(&public_url),
                    },
                    (Some(advertised), Some(ports)) => VaultAddressing::Balanced {
                        bind: options.listen.ip(),
                        advertised,
                        ports,
                    },
                    _ => VaultAddressing::Loopback {
                        address: options.listen.ip(),
                    },
                },
            },
            pkcs11,
        )
        .await
        .context("opening the key vault service")?,
    );
    check_vault_addressing(&vault_service, options.vault_domain.as_deref()).await?;
    let vault_data_plane = DataPlaneState {
        service: vault_service.clone(),
        access: Arc::new(crate::audit::AuditedVaultAccess {
            inner: IdentityVaultAccess {
                identity: identity.clone(),
            },
            audit: audit.clone(),
        }),
        token_authority: public_url.clone(),
    };
    let vault_listeners = Arc::new(VaultListeners::new(
        vault_data_plane.clone(),
        tls.clone(),
        options.listen.ip(),
    ));
    vault_listeners
        .start_all()
        .await
        .context("starting the key vault listeners")?;
    // Keys whose rotation policy says so get a new version when due.
    let key_rotation =
        hds_keyvault::spawn_rotation_task(vault_service.clone(), options.key_rotation_interval);

    // The path from a DICOM service to its customer-managed key. Managed identities' tokens go
    // only to the vaults served here, and to Azure's vault hosts when hds signs in to Azure.
    let azure_application = azure_application(&options)?;
    let hosted_vaults: Arc<dyn VaultDirectory> = Arc::new(HostedVaults {
        service: vault_service.clone(),
    });
    let mut destinations = TokenDestinations::none().with_served_vaults(hosted_vaults.clone());
    if azure_application.is_some() {
        destinations = destinations.with_azure_key_vault();
    }
    let client = KeyVaultClient::new(
        &ClientConfig {
            ca_pem_path: served.trusted_ca.clone(),
            trust_system_roots: true,
            ..ClientConfig::default()
        },
        destinations,
    )
    .context("creating the key vault client")?
    .with_metrics(metrics.key_vault_calls.clone());
    let entra: Option<Arc<dyn TokenSource>> = azure_application.clone().map(|application| {
        Arc::new(EntraTokenSource::new(application, reqwest::Client::new())) as Arc<dyn TokenSource>
    });
    let tokens: Arc<dyn TokenSource> =
        Arc::new(CachingTokenSource::new(Arc::new(RoutedTokenSource {
            managed_identities: Arc::new(ManagedIdentityTokens {
                identity: identity.clone(),
            }),
            entra,
        })));
    let validator = KeyValidator::new(client.clone(), tokens.clone(), hosted_vaults);
    let monitor = Arc::new(
        KeyAccessMonitor::open(
            database.clone(),
            MonitorConfig {
                probe_interval: options.cmk_probe_interval,
                lost_access_latch: options.cmk_lost_access_latch,
                ..MonitorConfig::default()
            },
            Arc::new(VaultKeyProbe::new(
                client.clone(),
                tokens.clone(),
                Arc::new(SystemClock),
            )),
            Arc::new(SystemClock),
        )
        .await
        .context("opening the key-access monitor")?,
    );
    metrics.set_key_access_source(monitor.clone());
    let host = DicomHost::new(DicomHostParts {
        database: database.clone(),
        root_key: root_key.clone(),
        index: index.clone(),
        blobs: blobs.clone(),
        keyrings: keyrings.clone(),
        client,
        tokens,
        validator,
        monitor: monitor.clone(),
        azure_application,
        ids: ServiceIds::open(database.clone())
            .await
            .context("opening the DICOM service ids")?,
    });

    // Bulk updates (`studies/$bulkUpdate`): this process takes any whose lease is free and whose
    // service's keys it holds, and continues from the last study recorded.
    let update_worker = hds_archive::spawn_update_worker(
        hds_archive::Archive::new(index.clone(), blobs.clone()),
        keyrings,
        Duration::from_secs(1),
    );

    // DICOM events: subscriptions (Event Grid system topics on a workspace) are delivered by a
    // dispatcher that reads the change feed after each subscription's cursor. Its client sends
    // no credentials and may not call this hds's own listener.
    let event_store = hds_events::EventStore::open(database.clone())
        .await
        .context("opening the event subscriptions")?;
    let webhooks = hds_events::WebhookClient::new(&hds_events::WebhookConfig {
        ca_pem_path: served.trusted_ca.clone(),
        forbidden_authorities: own_authorities(&public_url, options.listen),
        ..hds_events::WebhookConfig::default()
    })
    .context("creating the webhook client")?;
    let dispatcher = hds_events::Dispatcher::new(
        event_store.clone(),
        Arc::new(crate::events::HostChangeSource {
            host: host.clone(),
            archive: hds_archive::Archive::new(index.clone(), blobs.clone()),
        }),
        webhooks.clone(),
        hds_events::DispatcherConfig {
            idle_interval: options.event_poll_interval,
            first_retry: options.event_first_retry,
            metrics: metrics.event_deliveries.clone(),
            ..hds_events::DispatcherConfig::default()
        },
    );

    // The control plane, with every resource provider.
    let builder = Arm::builder(
        database.clone(),
        ArmConfig {
            tenant_id: bootstrap.tenant_id.clone(),
            subscriptions: vec![Subscription {
                subscription_id: bootstrap.subscription_id.clone(),
                display_name: "hds".to_owned(),
            }],
            public_base_url: Some(public_url.clone()),
        },
        Arc::new(crate::audit::AuditedArmAccess {
            inner: hds_providers::access_control(identity.clone()),
            audit: audit.clone(),
        }),
    );
    let arm = hds_providers::register_all(
        builder,
        &ProviderDependencies {
            database: database.clone(),
            identity: identity.clone(),
            key_vault: vault_service.clone(),
            dicom_host: host.clone(),
            public_base_url: public_url.clone(),
            vault_events: Some(Arc::new(VaultListenerEvents {
                listeners: vault_listeners.clone(),
            })),
            events: Some(hds_providers::EventGridParts {
                store: event_store.clone(),
                client: webhooks.clone(),
                dispatcher: Some(dispatcher.clone()),
            }),
        },
    )
    .build()
    .await
    .context("opening the control plane")?;

    // Serve the DICOM services that exist (their keys' state comes from the monitor's store).
    let subscription = ResourceId::subscription(&bootstrap.subscription_id);
    for resource in arm
        .store()
        .list_within(&subscription)
        .await
        .context("listing resources")?
    {
        if let Some(spec) = hds_providers::stored_spec(&resource, &bootstrap.tenant_id, &public_url)
            && let Err(error) = host.restore(&spec).await
        {
            tracing::error!(error = %error, "a DICOM service could not be restored");
        }
    }

    // Events are delivered once the services are served (their keys open their feeds).
    let event_dispatcher = dispatcher.spawn();

    // Several nodes: serve the DICOM services other nodes create, change or delete.
    let service_refresh = (database.backend() == hds_db::Backend::Postgres).then(|| {
        let (arm, host, tenant_id, public_url) = (
            arm.clone(),
            host.clone(),
            bootstrap.tenant_id.clone(),
            public_url.clone(),
        );
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SERVICE_REFRESH);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match arm.store().list_within(&subscription).await {
                    Ok(resources) => {
                        let specs: Vec<_> = resources
                            .iter()
                            .filter_map(|resource| {
                                hds_providers::stored_spec(resource, &tenant_id, &public_url)
                            })
                            .collect();
                        host.reconcile(&specs).await;
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "listing the DICOM services failed");
                    }
                }
            }
        })
    });

    let limits = listener_limits(&options)?;
    let dicomweb = hds_dicomweb::router(DicomWebState {
        archive: hds_archive::Archive::new(index, blobs),
        services: host.clone(),
        access: Arc::new(crate::audit::AuditedDicomAccess {
            inner: IdentityDicomAccess {
                identity: identity.clone(),
            },
            queue: audit_queue.clone(),
        }),
        config: Arc::new(DicomWebConfig {
            max_request_bytes: options.max_request_bytes,
            public_base_url: public_url.clone(),
            multipart: MultipartLimits {
                max_parts: options.max_stow_parts,
                max_header_bytes: options.max_part_header_bytes,
            },
            body_idle_timeout: options.body_idle_timeout,
            export_policy: hds_archive::ExportPolicy {
                forbidden_authorities: own_authorities(&public_url, options.listen),
            },
        }),
    });
    // Async operations whose node died (this one before a restart, or another) end as Failed.
    let operation_sweeper = arm.spawn_operation_sweeper(Duration::from_secs(10));
    let arm_router = hds_arm::router(arm.clone());
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/",
            get(|| async { axum::response::Redirect::temporary("/portal/") }),
        )
        .merge(hds_portal::router())
        .merge(identity.router())
        .merge(
            identity
                .graph_router()
                .layer(axum::middleware::from_fn_with_state(
                    (identity.clone(), audit.clone()),
                    crate::audit::audit_graph_changes,
                )),
        )
        .merge(crate::az_metadata::router(
            &public_url,
            &bootstrap.tenant_id,
            crate::az_metadata::key_vault_dns_suffix(
                options.vault_domain.as_deref(),
                public_port(&public_url),
            ),
        ))
        .merge(dicomweb)
        .merge(arm_router.clone())
        .fallback(crate::az_metadata::not_found)
        .layer(axum::middleware::from_fn_with_state(
            crate::audit::ActivityLogLayer::new(
                audit.clone(),
                hds_providers::access_control(identity.clone()),
                &bootstrap.tenant_id,
                &public_url,
            ),
            crate::audit::ActivityLogLayer::route,
        ));
    // With --vault-domain, requests for `{vault}.vault.DOMAIN` go to the vault data plane before
    // any route of the main listener is matched.
    // Until the start-up below is done, hds's own routes answer 503 (only under --vault-domain
    // does anything listen that early: the seed's flow reaches its vault through the main
    // listener).
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = app.layer(axum::middleware::from_fn_with_state(
        ready.clone(),
        starting_until_ready,
    ));
    let app = match &options.vault_domain {
        Some(domain) => {
            let vaults = hds_keyvault::host_routed_router(vault_data_plane.clone(), domain);
            app.layer(axum::middleware::from_fn_with_state(
                VaultHosts {
                    suffix: format!(".vault.{domain}"),
                    router: vaults,
                },
                route_vault_hosts,
            ))
        }
        None => app,
    };
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            InFlightRequests::new(limits.max_in_flight_requests, metrics.http.clone()),
            listener_limits::limit_in_flight,
        ))
        .layer(axum::middleware::from_fn_with_state(
            metrics.http.clone(),
            crate::metrics::record_request,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(logging::request_span));

    let handle = axum_server::Handle::new();
    let mut server = None;
    if options.vault_domain.is_some() {
        server = Some(spawn_main_listener(
            &options,
            app.clone(),
            &tls,
            &limits,
            &metrics,
            handle.clone(),
        )?);
    }

    if !options.no_bootstrap {
        let admin = read_admin(&bootstrap.admin_credentials_path)?;
        let token = identity
            .issue_token_for_client_credentials(
                &admin.client_id,
                &admin.client_secret,
                MANAGEMENT_AUDIENCE,
            )
            .await
            .context("getting the admin's token")?
            .context("the admin's credentials in admin.json are not accepted")?;
        let names = SeedNames {
            subscription_id: &bootstrap.subscription_id,
            tenant_id: &bootstrap.tenant_id,
            resource_group: "default",
            workspace: DEFAULT_WORKSPACE,
            service: DEFAULT_SERVICE,
        };
        seed_flow::run(&arm_router, &token.access_token, &names)
            .await
            .context("setting up the default DICOM service")?;
    }
    bootstrap_lock
        .release()
        .await
        .context("letting other nodes start")?;

    let (stop_monitor, monitor_stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor_task = monitor.clone();
    tokio::spawn(async move {
        monitor_task
            .run(async {
                let _ = monitor_stopped.await;
            })
            .await;
    });

    let metrics_listener = match options.metrics_listen {
        Some(address) => Some(crate::metrics::serve(address, metrics.clone()).await?),
        None => None,
    };

    // Bind only now that everything is ready: a client that connects is served at once.
    let server = match server {
        Some(server) => server,
        None => spawn_main_listener(&options, app, &tls, &limits, &metrics, handle.clone())?,
    };
    ready.store(true, std::sync::atomic::Ordering::Release);
    println!("hds is ready");
    println!("  DICOMweb:  {public_url}/dicom/{DEFAULT_WORKSPACE}/{DEFAULT_SERVICE}/v2/");
    println!(
        "  ARM:       {public_url}/subscriptions/{}",
        bootstrap.subscription_id
    );
    println!("  portal:    {public_url}/portal/");
    println!(
        "  tokens:    {public_url}/{}/oauth2/v2.0/token",
        bootstrap.tenant_id
    );
    println!(
        "  admin:     {}",
        bootstrap.admin_credentials_path.display()
    );
    println!("{}", served.banner);
    if let Some(address) = options.metrics_listen {
        println!("  metrics:   http://{address}/metrics");
    }
    for vault in vault_service.list_vaults().await.unwrap_or_default() {
        println!("  vault {}: {}", vault.name, vault.vault_uri);
    }

    let shutdown_handle = handle.clone();
    tokio::spawn(async move {
        wait_for_shutdown_signal(terminate, interrupt).await;
        tracing::info!("shutting down");
        shutdown_handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    server.await.context("the main listener's task")??;
    // The DICOM requests' records still queued.
    audit_queue.flush().await;
    sweeper.abort();
    operation_sweeper.abort();
    operation_worker.abort();
    modalities_filler.abort();
    export_worker.abort();
    update_worker.abort();
    // The subscriptions' leases go with a clean stop, so a restart delivers at once.
    event_dispatcher.abort();
    let _ = event_dispatcher.await;
    if let Err(error) = dispatcher.release_leases().await {
        tracing::warn!(%error, "the event subscriptions' leases could not be released");
    }
    key_rotation.abort();
    if let Some(metrics_listener) = metrics_listener {
        metrics_listener.abort();
    }
    if let Some(task) = service_refresh {
        task.abort();
    }
    let _ = stop_monitor.send(());
    vault_listeners.shutdown();
    println!("hds stopped");
    Ok(())
}

/// The `host:port` authorities of this hds's main listener (its public URL and its listen
/// address), which no webhook may name.
fn own_authorities(public_url: &str, listen: std::net::SocketAddr) -> Vec<String> {
    let mut authorities = vec![listen.to_string()];
    if let Ok(url) = reqwest::Url::parse(public_url)
        && let Some(host) = url.host_str()
    {
        authorities.push(format!(
            "{}:{}",
            host.to_lowercase(),
            url.port_or_known_default().unwrap_or_default()
        ));
    }
    authorities
}

/// Binds the main listener and serves `app` on it in a task of its own, until `handle` shuts it
/// down.
fn spawn_main_listener(
    options: &UpOptions,
    app: Router,
    tls: &Arc<rustls::ServerConfig>,
    limits: &ListenerLimits,
    metrics: &hds_metrics::Metrics,
    handle: axum_server::Handle,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = std::net::TcpListener::bind(options.listen)
        .with_context(|| format!("binding {}", options.listen))?;
    listener.set_nonblocking(true)?;
    // The client's address reaches the handlers (the vault firewall checks it).
    let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    // TCP_NODELAY: without it a response's last small write can wait for the client's delayed
    // acknowledgement (tens of milliseconds on WADO-RS tails).
    let no_delay = LimitedAcceptor::new(
        axum_server::accept::NoDelayAcceptor::new(),
        limits,
        metrics.http.clone(),
    );
    let limits = *limits;
    Ok(if options.http {
        let mut server = axum_server::from_tcp(listener).acceptor(no_delay);
        listener_limits::configure_http(&mut server, &limits);
        tokio::spawn(server.handle(handle).serve(service))
    } else {
        let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.clone());
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config).acceptor(no_delay);
        let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
        listener_limits::configure_http(&mut server, &limits);
        tokio::spawn(server.handle(handle).serve(service))
    })
}

/// 503 with `Retry-After` for hds's own routes while the start-up is not done.
async fn starting_until_ready(
    axum::extract::State(ready): axum::extract::State<Arc<std::sync::atomic::AtomicBool>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if ready.load(std::sync::atomic::Ordering::Acquire) {
        return next.run(request).await;
    }
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        axum::Json(serde_json::json!({
            "error": {"code": "ServiceStarting", "message": "hds is starting; try again in a moment."}
        })),
    )
        .into_response()
}

/// The port of `public_url` when it is not HTTPS's default: vault host names carry it.
fn public_port(public_url: &str) -> Option<u16> {
    let uri = public_url.parse::<axum::http::Uri>().ok()?;
    uri.port_u16().filter(|port| *port != 443)
}

/// Vaults keep the addressing they were created under (their URIs are written into key ids and
/// DICOM services' key URLs), so a data dir started with and without --vault-domain is refused
/// with what to do, rather than serving vaults nobody can reach.
async fn check_vault_addressing(
    vaults: &KeyVaultService,
    vault_domain: Option<&str>,
) -> anyhow::Result<()> {
    let existing = vaults
        .list_vaults()
        .await
        .context("reading the key vaults")?;
    match vault_domain {
        Some(domain) => {
            if let Some(vault) = existing.iter().find(|vault| vault.port.is_some()) {
                anyhow::bail!(
                    "--vault-domain {domain}: vault '{}' was created with a port of its own ({}); vaults keep the addressing they were created under. Start without --vault-domain, or use a new data dir",
                    vault.name,
                    vault.vault_uri
                );
            }
        }
        None => {
            if let Some(vault) = existing.iter().find(|vault| vault.port.is_none()) {
                anyhow::bail!(
                    "vault '{}' was created under --vault-domain (it has no port of its own); start with the same --vault-domain",
                    vault.name
                );
            }
        }
    }
    Ok(())
}

/// Where `route_vault_hosts` sends the requests for vault host names.
#[derive(Clone)]
struct VaultHosts {
    /// `.vault.DOMAIN`.
    suffix: String,
    router: Router,
}

/// Sends a request whose `Host` is `{something}.vault.DOMAIN` to the vault data plane (which
/// answers 404 for a vault it does not know); every other request continues to hds's routes.
async fn route_vault_hosts(
    axum::extract::State(vaults): axum::extract::State<VaultHosts>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().host());
    let for_a_vault = host.is_some_and(|host| {
        let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
        name.len() > vaults.suffix.len()
            && name
                .get(name.len() - vaults.suffix.len()..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(&vaults.suffix))
    });
    if !for_a_vault {
        return next.run(request).await;
    }
    use tower::ServiceExt;
    match vaults.router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The main listener's limits from the flags; a zero would refuse everything.
fn listener_limits(options: &UpOptions) -> anyhow::Result<ListenerLimits> {
    let limits = ListenerLimits {
        max_connections: options.max_connections,
        max_in_flight_requests: options.max_in_flight_requests,
        header_read_timeout: options.header_read_timeout,
        idle_timeout: options.idle_timeout,
    };
    anyhow::ensure!(
        limits.max_connections > 0 && limits.max_in_flight_requests > 0,
        "--max-connections and --max-in-flight-requests must be at least 1"
    );
    anyhow::ensure!(
        !limits.header_read_timeout.is_zero()
            && !limits.idle_timeout.is_zero()
            && !options.body_idle_timeout.is_zero(),
        "--header-read-timeout, --idle-timeout and --body-idle-timeout must be longer than 0"
    );
    anyhow::ensure!(
        options.max_stow_parts > 0 && options.max_part_header_bytes > 0,
        "--max-stow-parts and --max-part-header-bytes must be at least 1"
    );
    Ok(limits)
}

/// The Microsoft Entra ID application hds uses for keys kept in Azure Key Vault, if configured.
fn azure_application(options: &UpOptions) -> anyhow::Result<Option<EntraApplication>> {
    let (Some(tenant_id), Some(client_id)) = (&options.azure_tenant_id, &options.azure_client_id)
    else {
        return Ok(None);
    };
    let secret_file = options
        .azure_client_secret_file
        .as_ref()
        .context("--azure-client-id needs --azure-client-secret-file")?;
    let metadata =
        fs::metadata(secret_file).with_context(|| format!("reading {}", secret_file.display()))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "{} is readable by other users; run chmod 600 on it",
            secret_file.display()
        );
    }
    let secret = zeroize::Zeroizing::new(
        fs::read_to_string(secret_file)
            .with_context(|| format!("reading {}", secret_file.display()))?
            .trim()
            .to_owned(),
    );
    Ok(Some(EntraApplication {
        authority: options.azure_authority.clone(),
        tenant_id: tenant_id.clone(),
        client_id: client_id.clone(),
        client_secret: secret,
    }))
}

/// `ISSUER=JWKS`: a JWKS URL, or a file holding the JWKS document.
fn external_issuer(text: &str) -> anyhow::Result<ExternalIssuer> {
    let (issuer, jwks) = text
        .split_once('=')
        .with_context(|| format!("--trust-issuer wants ISSUER=JWKS_URL_OR_FILE, not '{text}'"))?;
    if jwks.contains("://") {
        return ExternalIssuer::from_jwks_url(issuer, jwks)
            .with_context(|| format!("--trust-issuer {issuer}: the JWKS URL is refused"));
    }
    let document =
        fs::read_to_string(jwks).with_context(|| format!("reading the JWKS document {jwks}"))?;
    ExternalIssuer::from_jwks_json(issuer, &document)
        .with_context(|| format!("{jwks} is not a JWKS document"))
}

fn read_admin(path: &Path) -> anyhow::Result<AdminCredentials> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Creates `path` if needed and makes it private to this user: it holds the root key.
fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(())
}

async fn wait_for_shutdown_signal(
    mut terminate: tokio::signal::unix::Signal,
    mut interrupt: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
