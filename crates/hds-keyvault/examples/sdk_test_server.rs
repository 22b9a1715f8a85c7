//! A throwaway vault server for the Python SDK tests (`tests/python`).
//!
//! Creates, in a temporary data dir, a root key, the local CA and three vaults, starts their
//! HTTPS listeners on 127.0.0.1 and prints one JSON line describing them (URLs, CA path,
//! tokens). Stops when stdin closes or on Ctrl-C. Tokens come from a fixed table
//! ([`StaticAccessControl`]): this is a test fixture, not a server to deploy.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hds_crypto::root::RootKey;
use hds_db::Database;
use hds_keyvault::access::Caller;
use hds_keyvault::model::{
    AccessPolicy, DefaultAction, KeyPermission, NetworkAcls, VaultProperties,
};
use hds_keyvault::{
    DataPlaneState, KeyVaultService, ServiceConfig, StaticAccessControl, VaultAddressing,
    VaultListeners,
};
use tokio::io::AsyncReadExt;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OFFICER: &str = "11111111-1111-1111-1111-111111111111";
const READER: &str = "22222222-2222-2222-2222-222222222222";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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

    let access = Arc::new(StaticAccessControl::new());
    let caller = |principal_id: &str| Caller {
        principal_id: principal_id.to_owned(),
        tenant_id: TENANT.to_owned(),
        is_trusted_service: false,
    };
    access.add_token("officer-token", caller(OFFICER));
    access.add_token("reader-token", caller(READER));
    access.grant(OFFICER, "*");
    access.grant(READER, "Microsoft.KeyVault/vaults/keys/read");

    let resource_id = |name: &str| {
        format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{name}"
        )
    };
    let mut protected = VaultProperties::new(TENANT);
    protected.enable_purge_protection = true;
    let (protected, _) = service
        .create_or_update_vault(&resource_id("sdk-protected"), "sdk-protected", protected)
        .await?;

    let plain = VaultProperties::new(TENANT);
    let (plain, _) = service
        .create_or_update_vault(&resource_id("sdk-plain"), "sdk-plain", plain)
        .await?;

    let mut walled = VaultProperties::new(TENANT);
    walled.enable_rbac_authorization = false;
    walled.access_policies = vec![AccessPolicy {
        tenant_id: TENANT.to_owned(),
        object_id: OFFICER.to_owned(),
        key_permissions: vec![KeyPermission::All],
    }];
    walled.network_acls = NetworkAcls {
        default_action: DefaultAction::Deny,
        ip_rules: vec!["203.0.113.0/24".parse()?],
        ..NetworkAcls::default()
    };
    let (walled, _) = service
        .create_or_update_vault(&resource_id("sdk-walled"), "sdk-walled", walled)
        .await?;

    let state = DataPlaneState {
        service,
        access,
        token_authority: "https://127.0.0.1/hds-token-authority".to_owned(),
    };
    let listeners = VaultListeners::new(state, ca.server_config(&[])?, address);
    listeners.start_all().await?;

    let description = serde_json::json!({
        "ca": ca.ca_pem_path(),
        "tenant": TENANT,
        "tokens": {"officer": "officer-token", "reader": "reader-token", "unknown": "not-a-token"},
        "vaults": {
            "protected": protected.vault_uri,
            "plain": plain.vault_uri,
            "walled": walled.vault_uri,
        },
    });
    println!("{description}");

    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    tokio::select! {
        _ = async { while matches!(stdin.read(&mut sink).await, Ok(count) if count > 0) {} } => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    listeners.shutdown();
    Ok(())
}
