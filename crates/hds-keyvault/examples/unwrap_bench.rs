//! Benchmark: `unwrapkey` with an RSA-2048 key and RSA-OAEP-256 over HTTPS on loopback, the
//! call every DICOM service makes to reach its root key.
//!
//! Starts a vault (SQLite in a temporary dir) and its HTTPS listener in this process, then
//! measures with a reqwest client: latency percentiles at concurrency 1, and throughput at
//! concurrency 8.
//!
//! ```text
//! cargo run -p hds-keyvault --example unwrap_bench [-- REQUESTS_PER_PHASE]
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hds_crypto::root::RootKey;
use hds_db::Database;
use hds_keyvault::access::Caller;
use hds_keyvault::material::EncryptionAlgorithm;
use hds_keyvault::model::{CreateKeyOptions, KeyOperation, KeyType, VaultProperties};
use hds_keyvault::{
    DataPlaneState, KeyVaultService, ServiceConfig, StaticAccessControl, VaultAddressing,
    VaultListeners,
};

const TENANT: &str = "bench-tenant";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requests: usize = std::env::args()
        .nth(1)
        .map(|count| count.parse())
        .transpose()?
        .unwrap_or(4000);
    let data_dir = tempfile::tempdir()?;
    let root_key = Arc::new(RootKey::generate());
    let ca = hds_tls::LocalCa::load_or_create(&data_dir.path().join("tls"), &root_key)?;
    let database = Database::connect(&format!(
        "sqlite:{}",
        data_dir.path().join("hds.db").display()
    ))
    .await?;
    let address = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let config = ServiceConfig {
        addressing: VaultAddressing::Loopback { address },
    };
    let service = Arc::new(KeyVaultService::open(database, root_key, config).await?);
    let resource_id =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/bench";
    let (vault, _) = service
        .create_or_update_vault(resource_id, "bench", VaultProperties::new(TENANT))
        .await?;
    let (key, _) = service
        .create_key_if_absent(&vault, "kek", CreateKeyOptions::rsa(KeyType::Rsa))
        .await?;
    let (kid, wrapped) = service
        .encrypt(
            &vault,
            "kek",
            None,
            KeyOperation::WrapKey,
            EncryptionAlgorithm::RsaOaep256,
            &[9u8; 32],
        )
        .await?;
    assert_eq!(kid, key.key_uri_with_version());

    let access = Arc::new(StaticAccessControl::new());
    access.add_token(
        "bench",
        Caller {
            principal_id: "p".into(),
            tenant_id: TENANT.into(),
            is_trusted_service: true,
        },
    );
    access.grant("p", "Microsoft.KeyVault/vaults/keys/unwrap/action");
    let state = DataPlaneState {
        service,
        access,
        token_authority: "https://127.0.0.1".into(),
    };
    let listeners = VaultListeners::new(state, ca.server_config(&[])?, address);
    listeners.start_all().await?;

    let client = https_client(ca.ca_pem())?;
    let url = format!("{kid}/unwrapkey?api-version=7.5");
    let body = Arc::new(
        serde_json::json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode(&wrapped)})
            .to_string(),
    );

    // Warm-up: connections, caches.
    for _ in 0..200 {
        unwrap_once(&client, &url, &body).await?;
    }

    let mut latencies = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        unwrap_once(&client, &url, &body).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let percentile = |fraction: f64| {
        latencies[((latencies.len() as f64 * fraction) as usize).min(latencies.len() - 1)]
    };
    println!(
        "concurrency 1: {requests} unwraps, p50 {:?}, p90 {:?}, p99 {:?}",
        percentile(0.50),
        percentile(0.90),
        percentile(0.99)
    );

    let concurrency = 8;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.clone();
        let body = Arc::clone(&body);
        tasks.push(tokio::spawn(async move {
            for _ in 0..requests / concurrency {
                unwrap_once(&client, &url, &body).await?;
            }
            Ok::<_, reqwest::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let total = requests / concurrency * concurrency;
    println!(
        "concurrency {concurrency}: {total} unwraps in {:.2?}, {:.0}/s",
        elapsed,
        total as f64 / elapsed.as_secs_f64()
    );
    listeners.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

async fn unwrap_once(
    client: &reqwest::Client,
    url: &str,
    body: &str,
) -> Result<(), reqwest::Error> {
    let response = client
        .post(url)
        .bearer_auth("bench")
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?
        .error_for_status()?;
    response.bytes().await?;
    Ok(())
}

fn https_client(ca_pem: &str) -> Result<reqwest::Client, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(certificate?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()?)
}
