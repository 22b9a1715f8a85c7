//! Where a client's credentials come from, in order: flags, `HDS_*` environment variables, the
//! profile `hds login` keeps under `$HDS_CONFIG_DIR` (default `~/.config/hds`), and, on the
//! machine that runs hds, the bootstrap admin's `{data-dir}/admin.json`.
//!
//! A client secret is a credential, not a key: files holding one are written 0600 and refused
//! when group- or world-readable.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ConnectionOptions {
    /// The hds base URL, e.g. https://127.0.0.1:8443.
    #[arg(long, env = "HDS_ENDPOINT")]
    pub endpoint: Option<String>,
    /// The tenant to sign in to.
    #[arg(long, env = "HDS_TENANT_ID")]
    pub tenant: Option<String>,
    /// The service principal's client id.
    #[arg(long, env = "HDS_CLIENT_ID")]
    pub client_id: Option<String>,
    /// The service principal's client secret (prefer HDS_CLIENT_SECRET or a profile: flags show
    /// up in process lists).
    #[arg(long, env = "HDS_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// A CA certificate (PEM) to trust for the endpoint, e.g. {data-dir}/tls/ca.pem.
    #[arg(long, env = "HDS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// On the machine running hds: take the bootstrap admin's credentials from this data dir.
    #[arg(long, env = "HDS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Resolved credentials.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// The hds base URL.
    pub endpoint: String,
    /// The tenant.
    pub tenant_id: String,
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// The subscription to use by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// A CA certificate to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Profile")
            .field("endpoint", &self.endpoint)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// The admin credentials file written by `hds up` (same fields, camelCase).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdminFile {
    tenant_id: String,
    subscription_id: String,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    endpoint: Option<String>,
}

/// `$HDS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/hds`, else `~/.config/hds`.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HDS_CONFIG_DIR").filter(|value| !value.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|value| !value.is_empty()) {
        return PathBuf::from(dir).join("hds");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config/hds")
}

fn profile_path() -> PathBuf {
    config_dir().join("profile.json")
}

/// Reads a secret-bearing file, refusing one others can read.
fn read_private(path: &Path) -> anyhow::Result<Vec<u8>> {
    let metadata = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by other users; run chmod 600 on it",
            path.display()
        );
    }
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes a secret-bearing file 0600, atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Saves a profile for later commands.
pub fn save_profile(profile: &Profile) -> anyhow::Result<PathBuf> {
    let path = profile_path();
    write_private(&path, &serde_json::to_vec_pretty(profile)?)?;
    Ok(path)
}

fn load_profile() -> anyhow::Result<Option<Profile>> {
    let path = profile_path();
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read_private(&path)?;
    Ok(Some(
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?,
    ))
}

fn load_admin(data_dir: &Path) -> anyhow::Result<Option<Profile>> {
    let path = data_dir.join("admin.json");
    if !path.exists() {
        return Ok(None);
    }
    let admin: AdminFile = serde_json::from_slice(&read_private(&path)?)
        .with_context(|| format!("parsing {}", path.display()))?;
    let ca = data_dir.join("tls/ca.pem");
    Ok(Some(Profile {
        endpoint: admin
            .endpoint
            .unwrap_or_else(|| "https://127.0.0.1:8443".to_owned()),
        tenant_id: admin.tenant_id,
        client_id: admin.client_id,
        client_secret: admin.client_secret,
        subscription_id: Some(admin.subscription_id),
        ca_cert: ca.exists().then_some(ca),
    }))
}

impl ConnectionOptions {
    /// Resolves the credentials: each field from the first source that has it.
    pub fn resolve(&self) -> anyhow::Result<Profile> {
        let stored = load_profile()?;
        let admin = match &self.data_dir {
            Some(dir) => load_admin(dir)?,
            None => None,
        };
        let fallbacks: Vec<&Profile> = stored.iter().chain(admin.iter()).collect();
        let pick =
            |own: &Option<String>, field: fn(&Profile) -> Option<String>| -> Option<String> {
                own.clone()
                    .or_else(|| fallbacks.iter().find_map(|profile| field(profile)))
            };
        let endpoint = pick(&self.endpoint, |p| Some(p.endpoint.clone()));
        let tenant_id = pick(&self.tenant, |p| Some(p.tenant_id.clone()));
        let client_id = pick(&self.client_id, |p| Some(p.client_id.clone()));
        let client_secret = pick(&self.client_secret, |p| Some(p.client_secret.clone()));
        let subscription_id = fallbacks.iter().find_map(|p| p.subscription_id.clone());
        let ca_cert = self
            .ca_cert
            .clone()
            .or_else(|| fallbacks.iter().find_map(|p| p.ca_cert.clone()));
        match (endpoint, tenant_id, client_id, client_secret) {
            (Some(endpoint), Some(tenant_id), Some(client_id), Some(client_secret)) => {
                Ok(Profile {
                    endpoint: endpoint.trim_end_matches('/').to_owned(),
                    tenant_id,
                    client_id,
                    client_secret,
                    subscription_id,
                    ca_cert,
                })
            }
            _ => bail!(
                "no credentials: run `hds login`, set HDS_ENDPOINT, HDS_TENANT_ID, HDS_CLIENT_ID and \
                 HDS_CLIENT_SECRET, or pass --data-dir on the machine running hds"
            ),
        }
    }
}

/// An HTTP client that trusts the profile's CA (and the system's roots).
pub fn http_client(profile: &Profile) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
    if let Some(ca) = &profile.ca_cert {
        let pem = fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    Ok(builder.build()?)
}
