//! Command-line arguments. Every option of `hds up` can also come from an `HDS_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// hds: a self-hosted DICOM service whose data at rest is encrypted under keys you hold.
#[derive(Debug, Parser)]
#[command(name = "hds", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start hds: DICOMweb on one main listener, with its state in the data dir.
    Up(Box<UpOptions>),
    /// Check credentials and save them as the profile later commands use.
    Login(crate::client::account::LoginOptions),
    /// Tokens for the signed-in principal.
    #[command(subcommand)]
    Account(crate::client::account::AccountCommand),
    /// Send a request to the control plane (or any hds URL) with a token.
    Rest(crate::client::arm::RestOptions),
    /// A DICOM service's data plane: store, search, retrieve, delete.
    #[command(subcommand)]
    Dicom(crate::client::dicom::DicomCommand),
    /// DICOM services on the control plane.
    #[command(subcommand, name = "dicom-service")]
    DicomService(crate::client::control::DicomServiceCommand),
    /// Key vaults' keys.
    #[command(subcommand)]
    Keyvault(crate::client::control::KeyVaultCommand),
    /// Role assignments.
    #[command(subcommand)]
    Role(crate::client::control::RoleCommand),
    /// ARM template deployments.
    #[command(subcommand)]
    Deployment(crate::client::arm::DeploymentCommand),
    /// Take an online backup of a data dir (while `hds up` runs) into a new directory.
    Backup(crate::recovery::BackupOptions),
    /// Rebuild a data dir from a backup.
    Restore(crate::recovery::RestoreOptions),
    /// The root key at rest: move it under a passphrase or into a PKCS#11 token.
    #[command(subcommand)]
    RootKey(crate::root_key::RootKeyCommand),
    /// The audit log: list records, verify the chain.
    #[command(subcommand)]
    Audit(crate::audit::AuditCommand),
}

/// Options of `hds up`.
#[derive(Debug, Args)]
pub struct UpOptions {
    /// Where hds keeps its state: root key, TLS CA, index, blobs.
    #[arg(long, env = "HDS_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,

    /// The main listener's address. Until authentication is configured keep it on loopback.
    #[arg(long, env = "HDS_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,

    /// The URL clients use to reach the main listener (token issuers and RetrieveURLs name
    /// it); default `{scheme}://{listen}`.
    #[arg(long, env = "HDS_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Serve plain HTTP on the main listener instead of HTTPS (the local CA is still created).
    #[arg(long, env = "HDS_HTTP")]
    pub http: bool,

    /// The operator's own server certificate (PEM, leaf first, then intermediates) for the
    /// main listener and the vaults, instead of one from the local CA. Needs --tls-key.
    #[arg(long, env = "HDS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM; no access for other users: chmod 600 or 640).
    #[arg(long, env = "HDS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) hds trusts, beside the system's, for its own calls to its vaults
    /// when --tls-cert is given: the CA that issued it, when that is not a public one.
    #[arg(long, env = "HDS_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Several nodes behind a load balancer: the address vault URIs name
    /// (`https://ADDRESS:PORT/`), the balancer's, which forwards each port of --vault-ports to
    /// every node's listen address. Unset: the listen address (one node).
    #[arg(long, env = "HDS_VAULT_ADDRESS", requires = "vault_ports")]
    pub vault_address: Option<std::net::IpAddr>,

    /// With --vault-address: the ports vaults are given (`LOW-HIGH`, the same on every node
    /// and forwarded by the balancer).
    #[arg(long, env = "HDS_VAULT_PORTS", requires = "vault_address", value_parser = parse_port_range)]
    pub vault_ports: Option<(u16, u16)>,

    /// Serve vaults by host name on the main listener, as Azure does:
    /// `https://{vault}.vault.DOMAIN[:PORT]/` (PORT: the public URL's), so `az keyvault ...
    /// --vault-name` works. The names must resolve to this node (DNS, /etc/hosts; every
    /// `*.localhost` name does where libnss-myhostname is installed). Chosen at the data dir's
    /// first start: vaults keep the addressing they were created under.
    #[arg(long, env = "HDS_VAULT_DOMAIN", conflicts_with = "vault_address", value_parser = parse_vault_domain)]
    pub vault_domain: Option<String>,

    /// The index database: `sqlite` (a file in the data dir) or a `postgres://` URL.
    #[arg(long, env = "HDS_INDEX", default_value = "sqlite")]
    pub index: String,

    /// Where blobs live: unset for the data dir's `blobs/`; Azure Blob Storage as
    /// `az://CONTAINER[/PREFIX]` or `https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]`;
    /// S3 as `s3://BUCKET[/PREFIX]`. Credentials and endpoints come from the object store's own
    /// variables (AZURE_STORAGE_*, AWS_*), never from the URL (docs/deploy.md).
    #[arg(long, env = "HDS_BLOB_STORE", value_name = "URL")]
    pub blob_store: Option<String>,

    /// The largest STOW-RS request body accepted, in bytes.
    #[arg(long, env = "HDS_MAX_REQUEST_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_request_bytes: u64,

    /// The most `multipart/related` parts one STOW-RS request may hold (400 past it).
    #[arg(long, env = "HDS_MAX_STOW_PARTS", default_value_t = 10_000)]
    pub max_stow_parts: usize,

    /// The most bytes of one multipart part's header (400 past it).
    #[arg(long, env = "HDS_MAX_PART_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_part_header_bytes: usize,

    /// How long a request body may send nothing before the request is answered 408.
    #[arg(long, env = "HDS_BODY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub body_idle_timeout: std::time::Duration,

    /// How long a client may take to send a whole request head on the main listener.
    #[arg(long, env = "HDS_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: std::time::Duration,

    /// How long a main-listener connection may go without a byte either way while waiting for
    /// its client (between requests, or a client that stopped sending or reading).
    #[arg(long, env = "HDS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: std::time::Duration,

    /// The most connections the main listener holds at once; more are closed at once. Keep it
    /// well under the process's open-file limit (`ulimit -n`).
    #[arg(long, env = "HDS_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// The most requests the main listener handles at once; more are answered 503 with
    /// Retry-After.
    #[arg(long, env = "HDS_MAX_IN_FLIGHT_REQUESTS", default_value_t = 256)]
    pub max_in_flight_requests: usize,

    /// How often each customer-managed key is probed (get key, wrap and unwrap), e.g. 60s, 5m.
    #[arg(long, env = "HDS_CMK_PROBE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub cmk_probe_interval: std::time::Duration,

    /// How often the DICOM event dispatcher looks for changes to deliver when idle (e.g. 1s,
    /// 200ms).
    #[arg(long, env = "HDS_EVENT_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub event_poll_interval: std::time::Duration,

    /// The wait before the first retry of a failed event delivery; later retries follow Event
    /// Grid's schedule in proportion (10s: exactly Event Grid's 10 s, 30 s, 1 min, 5 min, ...).
    #[arg(long, env = "HDS_EVENT_FIRST_RETRY", default_value = "10s", value_parser = parse_duration)]
    pub event_first_retry: std::time::Duration,

    /// How often the key vault rotates keys whose rotation policy's Rotate action is due
    /// (e.g. 1m, 1h). A due rotation happens at the first pass after its time.
    #[arg(long, env = "HDS_KEY_ROTATION_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub key_rotation_interval: std::time::Duration,

    /// How long key access may be lost before only an update of the DICOM service brings it
    /// back, e.g. 30m.
    #[arg(long, env = "HDS_CMK_LOST_ACCESS_LATCH", default_value = "30m", value_parser = parse_duration)]
    pub cmk_lost_access_latch: std::time::Duration,

    /// Trust tokens of another OpenID issuer, so an organisation signs its users in with its
    /// own identity provider: `ISSUER=JWKS` where JWKS is the issuer's `jwks_uri` (https://
    /// only) or a file holding its JWKS document. Repeatable; its principals get ids of their
    /// own (a GUID derived from issuer, `tid` and `oid`, shown in a 403), never a local one.
    #[arg(
        long = "trust-issuer",
        env = "HDS_TRUST_ISSUERS",
        value_delimiter = ' ',
        value_name = "ISSUER=JWKS"
    )]
    pub trusted_issuers: Vec<String>,

    /// A PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so): RSA-HSM keys of hds's vaults
    /// are then generated and used inside its token, never extractable.
    #[arg(long, env = "HDS_PKCS11_MODULE")]
    pub pkcs11_module: Option<PathBuf>,

    /// The label of the PKCS#11 token to use.
    #[arg(long, env = "HDS_PKCS11_TOKEN_LABEL", default_value = "hds")]
    pub pkcs11_token_label: String,

    /// A 0600 file holding the token's user PIN.
    #[arg(long, env = "HDS_PKCS11_PIN_FILE")]
    pub pkcs11_pin_file: Option<PathBuf>,

    /// For customer keys kept in Azure Key Vault (`https://*.vault.azure.net/keys/...`): the
    /// Microsoft Entra ID tenant of the application hds signs in as.
    #[arg(long, env = "HDS_AZURE_TENANT_ID")]
    pub azure_tenant_id: Option<String>,

    /// The Entra ID application (client) id; grant it Key Vault Crypto Service Encryption User
    /// on the vault.
    #[arg(long, env = "HDS_AZURE_CLIENT_ID")]
    pub azure_client_id: Option<String>,

    /// A 0600 file holding the application's client secret.
    #[arg(long, env = "HDS_AZURE_CLIENT_SECRET_FILE")]
    pub azure_client_secret_file: Option<PathBuf>,

    /// The Entra ID authority.
    #[arg(long, env = "HDS_AZURE_AUTHORITY", default_value = hds_cmk::entra::DEFAULT_AUTHORITY)]
    pub azure_authority: String,

    /// Start empty: skip creating the default vault, key and CMK-encrypted DICOM service.
    #[arg(long, env = "HDS_NO_BOOTSTRAP")]
    pub no_bootstrap: bool,

    /// `full`: a write is acknowledged only once it is on stable storage (blob and directory
    /// synced, index commit synced). `relaxed`: nothing is synced, so a power cut loses
    /// acknowledged writes: UNSAFE, for benchmarks only.
    #[arg(long, env = "HDS_DURABILITY", value_enum, default_value_t = Durability::Full)]
    pub durability: Durability,

    /// Blobs no index row references are removed once older than this (e.g. 1h).
    #[arg(long, env = "HDS_ORPHAN_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub orphan_grace: std::time::Duration,

    /// How often the orphan sweeper runs (e.g. 1h).
    #[arg(long, env = "HDS_SWEEP_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub sweep_interval: std::time::Duration,

    /// Serve Prometheus metrics at `http://ADDR/metrics` (plain HTTP, no authentication: keep
    /// it on loopback or a network only the scraper reaches). Off unless given.
    #[arg(long, env = "HDS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// How the root key is kept at rest (plaintext `root.key` without these flags).
    #[command(flatten)]
    pub root_key: crate::root_key::RootKeyOptions,
}

/// When an acknowledged write is on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Before it is acknowledged (the default).
    Full,
    /// Whenever the operating system writes it back: a power cut loses acknowledged writes.
    Relaxed,
}

/// `90`, `90s`, `500ms`, `5m`, `2h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 60s, 5m or 500ms"))?;
    let seconds = |factor: u64| std::time::Duration::from_secs(number.saturating_mul(factor));
    match unit {
        "" | "s" => Ok(seconds(1)),
        "ms" => Ok(std::time::Duration::from_millis(number)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        _ => Err(format!("'{text}': use a unit of ms, s, m or h")),
    }
}

/// `$XDG_DATA_HOME/hds`, else `~/.local/share/hds`, else `./hds-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(data_home) = std::env::var_os("XDG_DATA_HOME").filter(|value| !value.is_empty()) {
        return PathBuf::from(data_home).join("hds");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|value| !value.is_empty()) {
        return PathBuf::from(home).join(".local/share/hds");
    }
    PathBuf::from("hds-data")
}

/// A DNS domain for `{vault}.vault.DOMAIN`: lowercase letters, digits and hyphens in labels of
/// 1 to 63 characters, not beginning or ending with a hyphen; room left for the two labels in
/// front of it (a vault name is at most 24 characters).
fn parse_vault_domain(text: &str) -> Result<String, String> {
    const MAX_DOMAIN: usize = 253 - "123456789012345678901234.vault.".len();
    let domain = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() || domain.len() > MAX_DOMAIN {
        return Err(format!(
            "a vault domain is a DNS name of 1 to {MAX_DOMAIN} characters"
        ));
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
    };
    if !domain.split('.').all(label_ok) {
        return Err(format!(
            "'{text}' is not a DNS domain (labels of letters, digits and inner hyphens, separated by dots)"
        ));
    }
    Ok(domain)
}

/// `LOW-HIGH`, both ports, LOW <= HIGH.
fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("'{text}' is not LOW-HIGH"))?;
    let port = |part: &str| {
        part.trim()
            .parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| format!("'{part}' is not a port"))
    };
    let (low, high) = (port(low)?, port(high)?);
    if low > high {
        return Err(format!("{low} is above {high}"));
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::parse_vault_domain;

    #[test]
    fn vault_domains_are_dns_names_with_room_for_a_vault() {
        assert_eq!(parse_vault_domain("Example.ORG."), Ok("example.org".into()));
        assert_eq!(parse_vault_domain("localhost"), Ok("localhost".into()));
        for hostile in [
            "",
            ".",
            "a..b",
            "-a.org",
            "a-.org",
            "a_b.org",
            "*.org",
            "a.org/keys",
            "a.org:443",
            "ex\u{e4}mple.org",
            "a b.org",
            &"a".repeat(64),
            &["abc"; 60].join("."),
        ] {
            assert!(
                parse_vault_domain(hostile).is_err(),
                "{hostile:?} was accepted"
            );
        }
    }
}
