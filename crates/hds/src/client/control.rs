//! Control-plane shortcuts for the seed's steps, each one `hds rest` call (or two) underneath:
//! `hds dicom-service update --key-url`, `hds keyvault key create/rotate`,
//! `hds role assignment create`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::account::access_token;
use crate::client::arm::{MANAGEMENT, send};
use crate::client::credentials::{ConnectionOptions, Profile};
use crate::client::output::OutputOptions;

const HEALTHCARE_API_VERSION: &str = "2023-06-01-preview";
const KEYVAULT_API_VERSION: &str = "2022-07-01";
const KEYS_DATA_API_VERSION: &str = "7.4";
const AUTHORIZATION_API_VERSION: &str = "2022-04-01";
/// The audience of vaults' data planes.
const VAULT_AUDIENCE: &str = "https://vault.azure.net";

/// Where a resource is: subscription and resource group.
#[derive(Debug, Clone, Args)]
pub struct GroupOptions {
    /// The resource group.
    #[arg(long, short = 'g')]
    pub resource_group: String,
    /// The subscription (default: the signed-in profile's).
    #[arg(long)]
    pub subscription: Option<String>,
    #[command(flatten)]
    pub connection: ConnectionOptions,
    #[command(flatten)]
    pub output: OutputOptions,
}

/// A resource name as ARM allows it in a path segment.
fn name(flag: &str, value: &str) -> anyhow::Result<()> {
    if value.is_empty()
        || value.len() > 127
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("{flag} must be 1 to 127 letters, digits, '-', '_' or '.': {value:?}");
    }
    Ok(())
}

struct Session {
    profile: Profile,
    token: String,
    group: String,
}

async fn session(options: &GroupOptions) -> anyhow::Result<Session> {
    options.output.validate()?;
    name("--resource-group", &options.resource_group)?;
    let profile = options.connection.resolve()?;
    let subscription = options
        .subscription
        .clone()
        .or_else(|| profile.subscription_id.clone())
        .context("no subscription: pass --subscription")?;
    name("--subscription", &subscription)?;
    let (token, _, _) = access_token(&profile, MANAGEMENT).await?;
    let group = format!(
        "/subscriptions/{subscription}/resourceGroups/{}",
        options.resource_group
    );
    Ok(Session {
        profile,
        token,
        group,
    })
}

impl Session {
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, value, _) = send(&self.profile, &self.token, method, path, body).await?;
        if status >= 400 {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!(
                "{method} {}: {status}: {message}",
                path.split('?').next().unwrap_or(path)
            );
        }
        Ok(value)
    }
}

/// `hds dicom-service ...`.
#[derive(Debug, Subcommand)]
pub enum DicomServiceCommand {
    /// Update a DICOM service: set the key-encryption key URL (the seed's "update the DICOM
    /// service"), or, without --key-url, apply the same settings again (which restores access
    /// after a key was lost for longer than the latch).
    Update(DicomServiceUpdateOptions),
}

/// Options of `hds dicom-service update`.
#[derive(Debug, Args)]
pub struct DicomServiceUpdateOptions {
    /// The workspace.
    #[arg(long)]
    pub workspace: String,
    /// The DICOM service.
    #[arg(long, short = 'n')]
    pub name: String,
    /// The key-encryption key's URL (versioned or versionless).
    #[arg(long)]
    pub key_url: Option<String>,
    #[command(flatten)]
    pub group: GroupOptions,
}

/// `hds dicom-service update`: GET, change, PUT, as the portal does.
pub async fn dicom_service_update(options: DicomServiceUpdateOptions) -> anyhow::Result<()> {
    name("--workspace", &options.workspace)?;
    name("--name", &options.name)?;
    if let Some(url) = &options.key_url {
        let parsed = reqwest::Url::parse(url).context("--key-url is not a URL")?;
        if parsed.scheme() != "https" || !parsed.path().starts_with("/keys/") || url.len() > 2048 {
            bail!("--key-url must be a vault key URL, https://VAULT/keys/NAME[/VERSION]: {url}");
        }
    }
    let session = session(&options.group).await?;
    let path = format!(
        "{}/providers/Microsoft.HealthcareApis/workspaces/{}/dicomservices/{}?api-version={HEALTHCARE_API_VERSION}",
        session.group, options.workspace, options.name
    );
    let current = session.call("GET", &path, None).await?;
    let mut identity =
        json!({ "type": current.pointer("/identity/type").cloned().unwrap_or(json!("None")) });
    if let Some(Value::Object(assigned)) = current.pointer("/identity/userAssignedIdentities") {
        let ids: serde_json::Map<String, Value> =
            assigned.keys().map(|id| (id.clone(), json!({}))).collect();
        identity["userAssignedIdentities"] = Value::Object(ids);
    }
    let key_url = options.key_url.clone().map(Value::String).or_else(|| {
        current
            .pointer("/properties/encryption/customerManagedKeyEncryption/keyEncryptionKeyUrl")
            .cloned()
    });
    let mut body = json!({
        "location": current.get("location").cloned().unwrap_or(json!("local")),
        "identity": identity,
        "properties": {},
    });
    if let Some(key_url) = key_url {
        body["properties"]["encryption"] =
            json!({ "customerManagedKeyEncryption": { "keyEncryptionKeyUrl": key_url } });
    }
    let updated = session.call("PUT", &path, Some(&body)).await?;
    options.group.output.print(&updated)
}

/// `hds keyvault ...`.
#[derive(Debug, Subcommand)]
pub enum KeyVaultCommand {
    /// Keys of a vault.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `hds keyvault key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key (or a new version of it), through the control plane.
    Create(KeyCreateOptions),
    /// Rotate a key now: a new version, through the vault's data plane.
    Rotate(KeyOptions),
}

/// A vault's key.
#[derive(Debug, Args)]
pub struct KeyOptions {
    /// The vault.
    #[arg(long)]
    pub vault_name: String,
    /// The key.
    #[arg(long, short = 'n')]
    pub name: String,
    #[command(flatten)]
    pub group: GroupOptions,
}

/// Options of `hds keyvault key create`.
#[derive(Debug, Args)]
pub struct KeyCreateOptions {
    #[command(flatten)]
    pub key: KeyOptions,
    /// The key type.
    #[arg(long, default_value = "RSA", value_parser = ["RSA", "RSA-HSM"])]
    pub kty: String,
    /// The key size in bits.
    #[arg(long, default_value_t = 3072, value_parser = clap::value_parser!(u32).range(2048..=4096))]
    pub size: u32,
}

fn vault_path(session: &Session, vault: &str) -> String {
    format!(
        "{}/providers/Microsoft.KeyVault/vaults/{vault}",
        session.group
    )
}

/// `hds keyvault key create`.
pub async fn key_create(options: KeyCreateOptions) -> anyhow::Result<()> {
    let key = &options.key;
    name("--vault-name", &key.vault_name)?;
    name("--name", &key.name)?;
    let session = session(&key.group).await?;
    let path = format!(
        "{}/keys/{}?api-version={KEYVAULT_API_VERSION}",
        vault_path(&session, &key.vault_name),
        key.name
    );
    let body = json!({ "properties": {
        "kty": options.kty,
        "keySize": options.size,
        "keyOps": ["wrapKey", "unwrapKey"],
        "attributes": { "enabled": true },
    }});
    let created = session.call("PUT", &path, Some(&body)).await?;
    key.group.output.print(&created)
}

/// `hds keyvault key rotate`: finds the vault's URI on the control plane, then asks the vault.
pub async fn key_rotate(options: KeyOptions) -> anyhow::Result<()> {
    name("--vault-name", &options.vault_name)?;
    name("--name", &options.name)?;
    let session = session(&options.group).await?;
    let vault = session
        .call(
            "GET",
            &format!(
                "{}?api-version={KEYVAULT_API_VERSION}",
                vault_path(&session, &options.vault_name)
            ),
            None,
        )
        .await?;
    let uri = vault
        .pointer("/properties/vaultUri")
        .and_then(Value::as_str)
        .context("the vault has no vaultUri")?;
    let (token, _, _) = access_token(&session.profile, VAULT_AUDIENCE).await?;
    let url = format!(
        "{}/keys/{}/rotate?api-version={KEYS_DATA_API_VERSION}",
        uri.trim_end_matches('/'),
        options.name
    );
    let (status, value, _) = send(&session.profile, &token, "POST", &url, None).await?;
    if status >= 400 {
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("refused");
        bail!("rotating {}: {status}: {message}", options.name);
    }
    options.group.output.print(&value)
}

/// `hds role ...`.
#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Role assignments.
    #[command(subcommand)]
    Assignment(AssignmentCommand),
}

/// `hds role assignment ...`.
#[derive(Debug, Subcommand)]
pub enum AssignmentCommand {
    /// Grant a principal a role at a scope.
    Create(AssignmentCreateOptions),
}

/// Options of `hds role assignment create`.
#[derive(Debug, Args)]
pub struct AssignmentCreateOptions {
    /// The principal's object id (a GUID), e.g. a DICOM service's principalId.
    #[arg(long)]
    pub assignee_object_id: String,
    /// The role: its name (e.g. "Key Vault Crypto Service Encryption User") or its GUID.
    #[arg(long)]
    pub role: String,
    /// The scope: a resource id such as /subscriptions/{s}/resourceGroups/{g}/providers/Microsoft.KeyVault/vaults/{v}.
    #[arg(long)]
    pub scope: String,
    /// The subscription (default: the signed-in profile's).
    #[arg(long)]
    pub subscription: Option<String>,
    #[command(flatten)]
    pub connection: ConnectionOptions,
    #[command(flatten)]
    pub output: OutputOptions,
}

fn is_guid(value: &str) -> bool {
    uuid::Uuid::parse_str(value).is_ok() && value.len() == 36
}

/// `hds role assignment create`.
pub async fn assignment_create(options: AssignmentCreateOptions) -> anyhow::Result<()> {
    options.output.validate()?;
    if !is_guid(&options.assignee_object_id) {
        bail!("--assignee-object-id must be a GUID");
    }
    if !options.scope.starts_with("/subscriptions/")
        || options.scope.len() > 1024
        || options.scope.contains(['?', '#', ' '])
        || options
            .scope
            .split('/')
            .skip(1)
            .any(|part| part.is_empty() || part == ".." || part == ".")
    {
        bail!(
            "--scope must be a resource id beginning /subscriptions/: {:?}",
            options.scope
        );
    }
    if options.role.is_empty() || options.role.len() > 256 {
        bail!("--role must be a role name or GUID");
    }
    let profile = options.connection.resolve()?;
    let subscription = options
        .subscription
        .clone()
        .or_else(|| profile.subscription_id.clone())
        .context("no subscription: pass --subscription")?;
    let (token, _, _) = access_token(&profile, MANAGEMENT).await?;
    let role_id = if is_guid(&options.role) {
        options.role.to_lowercase()
    } else {
        let listed = format!(
            "/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions?api-version={AUTHORIZATION_API_VERSION}"
        );
        let (status, value, _) = send(&profile, &token, "GET", &listed, None).await?;
        if status >= 400 {
            bail!("listing role definitions: {status}");
        }
        let matching: Vec<&Value> = value
            .get("value")
            .and_then(Value::as_array)
            .map(|roles| {
                roles
                    .iter()
                    .filter(|role| {
                        role.pointer("/properties/roleName")
                            .and_then(Value::as_str)
                            .is_some_and(|name| name.eq_ignore_ascii_case(&options.role))
                    })
                    .collect()
            })
            .unwrap_or_default();
        match matching.as_slice() {
            [role] => role
                .get("name")
                .and_then(Value::as_str)
                .context("a role definition without a name")?
                .to_owned(),
            [] => bail!("no role is named {:?}", options.role),
            _ => bail!("more than one role is named {:?}", options.role),
        }
    };
    let assignment = format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{}?api-version={AUTHORIZATION_API_VERSION}",
        options.scope.trim_end_matches('/'),
        uuid::Uuid::new_v4()
    );
    let body = json!({ "properties": {
        "roleDefinitionId": format!("/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"),
        "principalId": options.assignee_object_id,
        "principalType": "ServicePrincipal",
    }});
    let (status, value, _) = send(&profile, &token, "PUT", &assignment, Some(&body)).await?;
    if status >= 400 {
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("refused");
        bail!("creating the role assignment: {status}: {message}");
    }
    options.output.print(&value)
}
