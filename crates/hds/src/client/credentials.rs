//! Where a client's credentials come from, field by field, in the order `az` uses: explicit
//! flags, then `HDS_*` environment variables, then the profile `hds login` keeps under
//! `$HDS_CONFIG_DIR` (default `~/.config/hds`). A data dir (`--data-dir` or `HDS_DATA_DIR`, on the
//! machine that runs hds) contributes the bootstrap admin's `{data-dir}/admin.json` at the level
//! it was given at, below that level's own fields: so `--data-dir` wins over a saved profile (a
//! profile of another hds must never lend its tenant to a data dir named on the command line).
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
    /// The hds base URL, e.g. https://127.0.0.1:8443 [env: HDS_ENDPOINT].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The tenant to sign in to [env: HDS_TENANT_ID].
    #[arg(long)]
    pub tenant: Option<String>,
    /// The service principal's client id [env: HDS_CLIENT_ID].
    #[arg(long)]
    pub client_id: Option<String>,
    /// The service principal's client secret (prefer HDS_CLIENT_SECRET or a profile: flags show
    /// up in process lists) [env: HDS_CLIENT_SECRET].
    #[arg(long)]
    pub client_secret: Option<String>,
    /// A CA certificate (PEM) to trust for the endpoint, e.g. {data-dir}/tls/ca.pem
    /// [env: HDS_CA_CERT].
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// On the machine running hds: take the bootstrap admin's credentials from this data dir
    /// [env: HDS_DATA_DIR].
    #[arg(long)]
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

/// The environment as the resolver sees it: a variable's value, empty counting as unset.
type Environment<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process's own environment.
fn process_environment(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// `$HDS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/hds`, else `~/.config/hds`.
fn config_dir(environment: Environment<'_>) -> PathBuf {
    if let Some(dir) = environment("HDS_CONFIG_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = environment("XDG_CONFIG_HOME") {
        return PathBuf::from(dir).join("hds");
    }
    let home = environment("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config/hds")
}

fn profile_path(environment: Environment<'_>) -> PathBuf {
    config_dir(environment).join("profile.json")
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
    let path = profile_path(&process_environment);
    write_private(&path, &serde_json::to_vec_pretty(profile)?)?;
    Ok(path)
}

fn load_profile(environment: Environment<'_>) -> anyhow::Result<Option<Profile>> {
    let path = profile_path(environment);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read_private(&path)?;
    Ok(Some(
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?,
    ))
}

/// The bootstrap admin of a data dir. A data dir without `admin.json` is an error, not a reason
/// to fall back to another level: a mistyped `--data-dir` must not sign in somewhere else.
fn load_admin(data_dir: &Path) -> anyhow::Result<Profile> {
    let path = data_dir.join("admin.json");
    if !path.exists() {
        bail!(
            "{} has no admin.json: is it the data dir of a running `hds up`?",
            data_dir.display()
        );
    }
    let admin: AdminFile = serde_json::from_slice(&read_private(&path)?)
        .with_context(|| format!("parsing {}", path.display()))?;
    let ca = data_dir.join("tls/ca.pem");
    Ok(Profile {
        endpoint: admin
            .endpoint
            .unwrap_or_else(|| "https://127.0.0.1:8443".to_owned()),
        tenant_id: admin.tenant_id,
        client_id: admin.client_id,
        client_secret: admin.client_secret,
        subscription_id: Some(admin.subscription_id),
        ca_cert: ca.exists().then_some(ca),
    })
}

/// One level of credentials (flags, or the environment, or the profile): each field may be
/// missing.
#[derive(Default)]
struct Level {
    endpoint: Option<String>,
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    subscription_id: Option<String>,
    ca_cert: Option<PathBuf>,
}

impl Level {
    /// This level's own fields, then what its data dir's admin file adds.
    fn with_admin(mut self, data_dir: Option<&Path>) -> anyhow::Result<Level> {
        let Some(admin) = data_dir.map(load_admin).transpose()? else {
            return Ok(self);
        };
        self.endpoint.get_or_insert(admin.endpoint);
        self.tenant_id.get_or_insert(admin.tenant_id);
        self.client_id.get_or_insert(admin.client_id);
        self.client_secret.get_or_insert(admin.client_secret);
        if self.subscription_id.is_none() {
            self.subscription_id = admin.subscription_id;
        }
        if self.ca_cert.is_none() {
            self.ca_cert = admin.ca_cert;
        }
        Ok(self)
    }

    fn from_profile(profile: Profile) -> Level {
        Level {
            endpoint: Some(profile.endpoint),
            tenant_id: Some(profile.tenant_id),
            client_id: Some(profile.client_id),
            client_secret: Some(profile.client_secret),
            subscription_id: profile.subscription_id,
            ca_cert: profile.ca_cert,
        }
    }
}

impl ConnectionOptions {
    /// Resolves the credentials: each field from the first level that has it (flags, then the
    /// environment, then the saved profile).
    pub fn resolve(&self) -> anyhow::Result<Profile> {
        self.resolve_in(&process_environment)
    }

    fn resolve_in(&self, environment: Environment<'_>) -> anyhow::Result<Profile> {
        let flags = Level {
            endpoint: self.endpoint.clone(),
            tenant_id: self.tenant.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            subscription_id: None,
            ca_cert: self.ca_cert.clone(),
        }
        .with_admin(self.data_dir.as_deref())?;
        let variables = Level {
            endpoint: environment("HDS_ENDPOINT"),
            tenant_id: environment("HDS_TENANT_ID"),
            client_id: environment("HDS_CLIENT_ID"),
            client_secret: environment("HDS_CLIENT_SECRET"),
            subscription_id: environment("HDS_SUBSCRIPTION_ID"),
            ca_cert: environment("HDS_CA_CERT").map(PathBuf::from),
        }
        .with_admin(environment("HDS_DATA_DIR").map(PathBuf::from).as_deref())?;
        let profile = load_profile(environment)?
            .map(Level::from_profile)
            .unwrap_or_default();
        let levels = [flags, variables, profile];
        fn first<T: Clone>(levels: &[Level], field: fn(&Level) -> &Option<T>) -> Option<T> {
            levels.iter().find_map(|level| field(level).clone())
        }
        let endpoint = first(&levels, |level| &level.endpoint);
        let tenant_id = first(&levels, |level| &level.tenant_id);
        let client_id = first(&levels, |level| &level.client_id);
        let client_secret = first(&levels, |level| &level.client_secret);
        let subscription_id = first(&levels, |level| &level.subscription_id);
        let ca_cert = first(&levels, |level| &level.ca_cert);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn admin_dir(root: &Path, name: &str, tenant: &str) -> PathBuf {
        let dir = root.join(name);
        let admin = serde_json::json!({
            "tenantId": tenant,
            "subscriptionId": format!("sub-{name}"),
            "clientId": format!("client-{name}"),
            "clientSecret": format!("secret-{name}"),
            "endpoint": format!("https://{name}.example:8443"),
        });
        write_private(&dir.join("admin.json"), admin.to_string().as_bytes()).expect("admin.json");
        dir
    }

    fn profile(root: &Path) -> PathBuf {
        let config = root.join("config");
        let saved = Profile {
            endpoint: "https://profile.example".into(),
            tenant_id: "tenant-profile".into(),
            client_id: "client-profile".into(),
            client_secret: "secret-profile".into(),
            subscription_id: Some("sub-profile".into()),
            ca_cert: None,
        };
        write_private(
            &config.join("profile.json"),
            &serde_json::to_vec(&saved).expect("profile"),
        )
        .expect("profile.json");
        config
    }

    fn resolve(
        options: &ConnectionOptions,
        variables: &HashMap<&str, String>,
    ) -> anyhow::Result<Profile> {
        options.resolve_in(&|name: &str| variables.get(name).cloned())
    }

    fn no_flags() -> ConnectionOptions {
        ConnectionOptions {
            endpoint: None,
            tenant: None,
            client_id: None,
            client_secret: None,
            ca_cert: None,
            data_dir: None,
        }
    }

    #[test]
    fn flags_then_environment_then_profile() {
        let root = tempfile::tempdir().expect("tempdir");
        let config = profile(root.path());
        let flag_dir = admin_dir(root.path(), "flag", "tenant-flag");
        let env_dir = admin_dir(root.path(), "env", "tenant-env");
        let mut variables = HashMap::from([("HDS_CONFIG_DIR", config.display().to_string())]);

        // The profile alone.
        let resolved = resolve(&no_flags(), &variables).expect("profile");
        assert_eq!(resolved.tenant_id, "tenant-profile");

        // A data dir in the environment wins over the profile, field by field.
        variables.insert("HDS_DATA_DIR", env_dir.display().to_string());
        let resolved = resolve(&no_flags(), &variables).expect("environment");
        assert_eq!(resolved.tenant_id, "tenant-env");
        assert_eq!(resolved.client_secret, "secret-env");
        assert_eq!(resolved.endpoint, "https://env.example:8443");
        assert_eq!(resolved.subscription_id.as_deref(), Some("sub-env"));

        // An explicit --data-dir wins over both (a saved profile used to override it).
        let mut flags = no_flags();
        flags.data_dir = Some(flag_dir);
        let resolved = resolve(&flags, &variables).expect("flags");
        assert_eq!(resolved.tenant_id, "tenant-flag");
        assert_eq!(resolved.client_id, "client-flag");
        assert_eq!(resolved.subscription_id.as_deref(), Some("sub-flag"));

        // A single variable beats the profile; a single flag beats the variable and the data
        // dir given at the same level.
        variables.remove("HDS_DATA_DIR");
        variables.insert("HDS_CLIENT_SECRET", "secret-variable".into());
        let resolved = resolve(&no_flags(), &variables).expect("variable");
        assert_eq!(resolved.client_secret, "secret-variable");
        assert_eq!(resolved.tenant_id, "tenant-profile");
        flags.client_secret = Some("secret-option".into());
        flags.endpoint = Some("https://option.example/".into());
        let resolved = resolve(&flags, &variables).expect("option");
        assert_eq!(resolved.client_secret, "secret-option");
        assert_eq!(resolved.endpoint, "https://option.example");
        assert_eq!(resolved.tenant_id, "tenant-flag");
    }

    #[test]
    fn nothing_says_how_to_sign_in_and_readable_secrets_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let variables = HashMap::from([(
            "HDS_CONFIG_DIR",
            root.path().join("none").display().to_string(),
        )]);
        let error = resolve(&no_flags(), &variables).expect_err("no credentials");
        assert!(error.to_string().contains("hds login"), "{error}");
        let mut flags = no_flags();
        flags.data_dir = Some(root.path().join("not-a-data-dir"));
        let error = resolve(&flags, &variables).expect_err("no admin.json");
        assert!(error.to_string().contains("admin.json"), "{error}");

        let config = profile(root.path());
        fs::set_permissions(
            config.join("profile.json"),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let variables = HashMap::from([("HDS_CONFIG_DIR", config.display().to_string())]);
        let error = resolve(&no_flags(), &variables).expect_err("readable profile");
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }
}
