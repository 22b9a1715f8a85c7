//! The seed's flow, performed by `hds up` on an empty data dir so that one command gives a
//! working DICOM service encrypted under a customer-managed key: a key vault with soft delete,
//! purge protection and RBAC; an RSA 3072 key; a workspace; a DICOM service with a
//! system-assigned identity; the Key Vault Crypto Service Encryption User role for that identity
//! on the vault; and the key's versioned URL set on the service.
//!
//! Every step is an ordinary control-plane request made as the bootstrap admin, through the
//! same router clients use, so the flow exercises (and is checked by) the real providers.

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Key Vault Crypto Service Encryption User.
const CRYPTO_SERVICE_ENCRYPTION_USER: &str = "e147488a-f6f5-4113-8e2d-b22465e65bf6";
const VAULT_NAME: &str = "default";
const KEY_NAME: &str = "dicom-cmk";
/// Where the bootstrap resources are, when their group does not exist yet: the region the
/// seed's templates default to, so that what hds creates reads as an Azure region.
const DEFAULT_LOCATION: &str = "westus3";

/// Names the flow creates.
pub struct SeedNames<'a> {
    pub subscription_id: &'a str,
    pub tenant_id: &'a str,
    pub resource_group: &'a str,
    pub workspace: &'a str,
    pub service: &'a str,
}

/// One in-process control-plane call.
async fn call(
    router: &Router,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("Authorization", format!("Bearer {token}"));
    let body = match body {
        Some(body) => {
            request = request.header("Content-Type", "application/json");
            Body::from(serde_json::to_vec(&body)?)
        }
        None => Body::empty(),
    };
    let response = router.clone().oneshot(request.body(body)?).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Ok((status, value))
}

async fn put(
    router: &Router,
    token: &str,
    step: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let (status, value) = call(router, token, Method::PUT, path, Some(body)).await?;
    if !status.is_success() {
        bail!("{step} failed ({status}): {value}");
    }
    println!("  ✓ {step}");
    Ok(value)
}

/// Runs the flow unless the DICOM service already has a key URL. Returns whether it ran.
pub async fn run(
    router: &Router,
    management_token: &str,
    names: &SeedNames<'_>,
) -> anyhow::Result<bool> {
    let group = format!(
        "/subscriptions/{}/resourceGroups/{}",
        names.subscription_id, names.resource_group
    );
    let workspace = format!(
        "{group}/providers/Microsoft.HealthcareApis/workspaces/{}",
        names.workspace
    );
    let service = format!("{workspace}/dicomservices/{}", names.service);
    let service_url = format!("{service}?api-version=2023-06-01-preview");
    let (status, existing) =
        call(router, management_token, Method::GET, &service_url, None).await?;
    let configured = existing
        .pointer("/properties/encryption/customerManagedKeyEncryption/keyEncryptionKeyUrl")
        .and_then(Value::as_str)
        .is_some();
    if status.is_success() && configured {
        return Ok(false);
    }
    // A group kept from an earlier start keeps its location (ARM refuses to move a group).
    let (group_status, existing_group) = call(
        router,
        management_token,
        Method::GET,
        &format!("{group}?api-version=2022-09-01"),
        None,
    )
    .await?;
    let location = existing_group
        .get("location")
        .and_then(Value::as_str)
        .filter(|_| group_status.is_success())
        .unwrap_or(DEFAULT_LOCATION)
        .to_owned();
    println!("Setting up a DICOM service encrypted under a customer-managed key:");
    put(
        router,
        management_token,
        &format!("resource group '{}'", names.resource_group),
        &format!("{group}?api-version=2022-09-01"),
        json!({ "location": location }),
    )
    .await?;
    let vault = format!("{group}/providers/Microsoft.KeyVault/vaults/{VAULT_NAME}");
    put(
        router,
        management_token,
        &format!("key vault '{VAULT_NAME}' (soft delete, purge protection, RBAC)"),
        &format!("{vault}?api-version=2022-07-01"),
        json!({
            "location": location,
            "properties": {
                "tenantId": names.tenant_id,
                "sku": { "family": "A", "name": "standard" },
                "enableSoftDelete": true,
                "softDeleteRetentionInDays": 90,
                "enablePurgeProtection": true,
                "enableRbacAuthorization": true,
                "accessPolicies": []
            }
        }),
    )
    .await?;
    let key = put(
        router,
        management_token,
        &format!("key '{KEY_NAME}' (RSA 3072, wrapKey/unwrapKey)"),
        &format!("{vault}/keys/{KEY_NAME}?api-version=2022-07-01"),
        json!({ "properties": { "kty": "RSA", "keySize": 3072, "keyOps": ["wrapKey", "unwrapKey"], "attributes": { "enabled": true } } }),
    )
    .await?;
    let key_url = key
        .pointer("/properties/keyUriWithVersion")
        .and_then(Value::as_str)
        .context("the key has no keyUriWithVersion")?
        .to_owned();
    put(
        router,
        management_token,
        &format!("workspace '{}'", names.workspace),
        &format!("{workspace}?api-version=2023-06-01-preview"),
        json!({ "location": location }),
    )
    .await?;
    let created = put(
        router,
        management_token,
        &format!(
            "DICOM service '{}' with a system-assigned identity",
            names.service
        ),
        &service_url,
        json!({ "location": location, "identity": { "type": "SystemAssigned" }, "properties": {} }),
    )
    .await?;
    let principal_id = created
        .pointer("/identity/principalId")
        .and_then(Value::as_str)
        .context("the DICOM service has no principalId")?
        .to_owned();
    let assignment = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("{vault}|{principal_id}|{CRYPTO_SERVICE_ENCRYPTION_USER}").as_bytes(),
    );
    put(
        router,
        management_token,
        "role Key Vault Crypto Service Encryption User for the service's identity on the vault",
        &format!("{vault}/providers/Microsoft.Authorization/roleAssignments/{assignment}?api-version=2022-04-01"),
        json!({
            "properties": {
                "roleDefinitionId": format!("/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{CRYPTO_SERVICE_ENCRYPTION_USER}", names.subscription_id),
                "principalId": principal_id,
                "principalType": "ServicePrincipal"
            }
        }),
    )
    .await?;
    put(
        router,
        management_token,
        &format!("key URL set on the DICOM service: {key_url}"),
        &service_url,
        json!({
            "location": location,
            "identity": { "type": "SystemAssigned" },
            "properties": { "encryption": { "customerManagedKeyEncryption": { "keyEncryptionKeyUrl": key_url } } }
        }),
    )
    .await?;
    Ok(true)
}
