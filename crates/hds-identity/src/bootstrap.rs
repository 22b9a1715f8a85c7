//! First start: a tenant, a subscription, the `default` resource group and an admin service
//! principal that holds Owner, Key Vault Administrator and DICOM Data Owner on the
//! subscription, with its credentials in `{data-dir}/admin.json`.
//!
//! Every step is idempotent and checks what exists before it creates anything, so a restart,
//! or a start after a bootstrap cut off at any point, finishes the job without duplicates.
//! The ids of the singletons are recorded in `identity_meta`. A client secret exists only
//! while it is being written to admin.json; if the database has the admin but the file is
//! missing (the process died in between, or someone removed it), the admin's secret is
//! replaced and the file written again.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::rbac::RoleAssignmentRequest;
use crate::roles::{DICOM_DATA_OWNER, KEY_VAULT_ADMINISTRATOR, OWNER};
use crate::{Identity, IdentityError, new_guid, now_unix};

pub(crate) const META_TENANT: &str = "tenant_id";
pub(crate) const META_SUBSCRIPTION: &str = "subscription_id";
const META_ADMIN: &str = "admin_principal_id";

/// The file the admin's credentials are written to, in the data directory.
pub const ADMIN_CREDENTIALS_FILE: &str = "admin.json";

/// The name of the resource group bootstrap creates.
pub const DEFAULT_RESOURCE_GROUP: &str = "default";

/// What `admin.json` holds: enough for a client to get tokens as the admin.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdminCredentials {
    /// The tenant.
    pub tenant_id: String,
    /// The bootstrap subscription.
    pub subscription_id: String,
    /// The admin's client id.
    pub client_id: String,
    /// The admin's client secret.
    pub client_secret: String,
    /// The platform's base URL, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for AdminCredentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AdminCredentials")
            .field("tenant_id", &self.tenant_id)
            .field("subscription_id", &self.subscription_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// What bootstrap found or created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapInfo {
    /// The tenant.
    pub tenant_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// `/subscriptions/{s}/resourceGroups/default`.
    pub resource_group_id: String,
    /// The admin service principal's object id.
    pub admin_principal_id: String,
    /// The admin's client id.
    pub admin_client_id: String,
    /// Where the admin's credentials are.
    pub admin_credentials_path: PathBuf,
    /// Whether this run wrote admin.json (first start, or the file was missing).
    pub admin_credentials_written: bool,
}

/// The records bootstrap creates once.
enum Singleton<'a> {
    Tenant,
    Subscription { tenant_id: &'a str },
}

impl Singleton<'_> {
    fn meta_name(&self) -> &'static str {
        match self {
            Singleton::Tenant => META_TENANT,
            Singleton::Subscription { .. } => META_SUBSCRIPTION,
        }
    }
}

pub(crate) async fn read_meta(
    database: &hds_db::Database,
    name: &str,
) -> Result<Option<String>, IdentityError> {
    let row = sqlx::query("SELECT value FROM identity_meta WHERE name = $1")
        .bind(name)
        .fetch_optional(database.pool())
        .await?;
    Ok(row.map(|row| row.try_get(0)).transpose()?)
}

impl Identity {
    /// Brings a fresh or half-bootstrapped database to the bootstrapped state; on a
    /// bootstrapped one, checks that admin.json is there. See the module docs.
    pub async fn bootstrap(&self, data_dir: &Path) -> Result<BootstrapInfo, IdentityError> {
        let _serialized = self.inner.bootstrap_lock.lock().await;
        let tenant_id = self.ensure_singleton(Singleton::Tenant).await?;
        let subscription_id = self
            .ensure_singleton(Singleton::Subscription {
                tenant_id: &tenant_id,
            })
            .await?;
        let resource_group_id =
            format!("/subscriptions/{subscription_id}/resourceGroups/{DEFAULT_RESOURCE_GROUP}");
        sqlx::query(
            "INSERT INTO identity_resource_groups (resource_group_key, resource_group_id, subscription_id, name, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(resource_group_id.to_ascii_lowercase())
        .bind(&resource_group_id)
        .bind(&subscription_id)
        .bind(DEFAULT_RESOURCE_GROUP)
        .bind(now_unix())
        .execute(self.database().pool())
        .await?;

        let credentials_path = data_dir.join(ADMIN_CREDENTIALS_FILE);
        let (admin, written) = self
            .ensure_admin(&tenant_id, &subscription_id, &credentials_path)
            .await?;

        let subscription_scope = format!("/subscriptions/{subscription_id}");
        for role in [OWNER, KEY_VAULT_ADMINISTRATOR, DICOM_DATA_OWNER] {
            let request = RoleAssignmentRequest {
                scope: subscription_scope.clone(),
                name: new_guid(),
                role_definition_id: role.to_owned(),
                principal_id: admin.0.clone(),
                principal_type: Some("ServicePrincipal".to_owned()),
            };
            match self.assign_role(&request).await {
                Ok(_) | Err(IdentityError::RoleAssignmentExists { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        if written {
            tracing::info!(path = %credentials_path.display(), "bootstrap admin credentials written");
        }
        Ok(BootstrapInfo {
            tenant_id,
            subscription_id,
            resource_group_id,
            admin_principal_id: admin.0,
            admin_client_id: admin.1,
            admin_credentials_path: credentials_path,
            admin_credentials_written: written,
        })
    }

    /// Reads the id of `singleton`, or creates it: a new GUID, its row and its meta record, in
    /// one write transaction. A concurrent creator's record wins.
    async fn ensure_singleton(&self, singleton: Singleton<'_>) -> Result<String, IdentityError> {
        let meta_name = singleton.meta_name();
        if let Some(existing) = read_meta(self.database(), meta_name).await? {
            return Ok(existing);
        }
        let mut transaction = self.database().begin_write().await?;
        let existing: Option<String> =
            sqlx::query("SELECT value FROM identity_meta WHERE name = $1")
                .bind(meta_name)
                .fetch_optional(&mut *transaction)
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
        if let Some(existing) = existing {
            return Ok(existing);
        }
        let id = new_guid();
        match singleton {
            Singleton::Tenant => {
                sqlx::query("INSERT INTO identity_tenants (tenant_id, created_at) VALUES ($1, $2)")
                    .bind(&id)
                    .bind(now_unix())
                    .execute(&mut *transaction)
                    .await?;
            }
            Singleton::Subscription { tenant_id } => {
                sqlx::query(
                    "INSERT INTO identity_subscriptions (subscription_id, tenant_id, display_name, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&id)
                .bind(tenant_id)
                .bind("hds")
                .bind(now_unix())
                .execute(&mut *transaction)
                .await?;
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO identity_meta (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(meta_name)
        .bind(&id)
        .execute(&mut *transaction)
        .await?;
        if inserted.rows_affected() == 0 {
            drop(transaction);
            return read_meta(self.database(), meta_name)
                .await?
                .ok_or(IdentityError::Corrupt("bootstrap record vanished"));
        }
        transaction.commit().await?;
        self.inner.access_cache.invalidate();
        Ok(id)
    }

    /// Makes sure the admin principal exists and admin.json holds working credentials for it.
    /// Returns (principal id, client id) and whether admin.json was written.
    async fn ensure_admin(
        &self,
        tenant_id: &str,
        subscription_id: &str,
        credentials_path: &Path,
    ) -> Result<((String, String), bool), IdentityError> {
        let recorded = read_meta(self.database(), META_ADMIN).await?;
        let existing = match &recorded {
            Some(principal_id) => self.principal(principal_id).await?,
            None => None,
        };
        let credentials = match existing {
            Some(admin) => {
                if admin_file_names(credentials_path, &admin.client_id) {
                    return Ok(((admin.principal_id, admin.client_id), false));
                }
                self.reset_client_secret(&admin.principal_id).await?
            }
            None => {
                let mut transaction = self.database().begin_write().await?;
                let credentials = self
                    .insert_service_principal(&mut transaction, tenant_id, "hds bootstrap admin")
                    .await?;
                // A concurrent node that recorded its admin first makes this one fail on the
                // primary key, rolling back its principal: no duplicate admin.
                let statement = if recorded.is_some() {
                    "UPDATE identity_meta SET value = $2 WHERE name = $1"
                } else {
                    "INSERT INTO identity_meta (name, value) VALUES ($1, $2)"
                };
                sqlx::query(statement)
                    .bind(META_ADMIN)
                    .bind(&credentials.principal_id)
                    .execute(&mut *transaction)
                    .await?;
                transaction.commit().await?;
                self.inner.access_cache.invalidate();
                credentials
            }
        };
        let file = AdminCredentials {
            tenant_id: tenant_id.to_owned(),
            subscription_id: subscription_id.to_owned(),
            client_id: credentials.client_id.clone(),
            client_secret: credentials.client_secret.as_str().to_owned(),
            endpoint: Some(self.inner.config.base_url.clone()),
        };
        write_admin_file(credentials_path, &file)?;
        Ok(((credentials.principal_id, credentials.client_id), true))
    }
}

/// Whether admin.json exists, parses, and is for `client_id`.
fn admin_file_names(path: &Path, client_id: &str) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<AdminCredentials>(&bytes).ok())
        .is_some_and(|credentials| credentials.client_id == client_id)
}

/// Writes admin.json atomically: a 0600 temporary file beside it, fsynced, renamed over it,
/// and the directory fsynced, so a crash leaves either the old file or the new one.
fn write_admin_file(path: &Path, credentials: &AdminCredentials) -> Result<(), IdentityError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory).map_err(io_error(directory))?;
    let temporary = path.with_extension("json.tmp");
    // A leftover from a crash may have other permissions: start afresh.
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(&temporary)(error)),
    }
    let mut json = serde_json::to_vec_pretty(credentials)
        .map_err(|_| IdentityError::Corrupt("admin credentials"))?;
    json.push(b'\n');
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary).map_err(io_error(&temporary))?;
    file.write_all(&json).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io_error(path))?;
    if let Ok(directory_handle) = std::fs::File::open(directory) {
        // Best effort: not every platform can fsync a directory.
        let _ = directory_handle.sync_all();
    }
    Ok(())
}
