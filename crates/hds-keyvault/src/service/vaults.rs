//! Vaults: their settings (soft delete, purge protection, permission model, firewall) as one
//! validated document, how each is addressed (a loopback port kept for life, or a host name
//! under a domain) and deleting a vault with its keys. The settings' own rules live in
//! [`crate::model::VaultProperties`]; what the firewall and access policies allow is decided
//! in [`crate::access`].

use std::net::{IpAddr, SocketAddr, TcpListener};

use sqlx::Row;
use sqlx::any::AnyRow;

use super::KeyVaultService;
use super::token::token_objects_of;
use crate::error::VaultError;
use crate::listeners::{release_port, reserve_port};
use crate::model::{Vault, VaultProperties};

/// The columns [`KeyVaultService::vault_from_row`] reads.
const VAULT_SELECT: &str =
    "SELECT display_name, resource_id, properties, port, created, updated FROM keyvault_vaults";

/// How vault data planes are addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAddressing {
    /// Each vault has its own HTTPS listener on this loopback (or local) address, with a port
    /// chosen at creation and kept: `https://127.0.0.1:{port}/`.
    Loopback {
        /// The address listeners bind.
        address: IpAddr,
    },
    /// Several nodes behind a load balancer: each vault has a port from `ports`, chosen at
    /// creation, free on `bind` and kept; every node listens on it at its own `bind` address,
    /// and the vault's URI names `advertised` (the balancer, which forwards each port of the
    /// range to the nodes): `https://{advertised}:{port}/` whichever node answers.
    Balanced {
        /// The address this node's vault listeners bind.
        bind: IpAddr,
        /// The address vault URIs name.
        advertised: IpAddr,
        /// The ports vaults are given (inclusive).
        ports: (u16, u16),
    },
    /// One listener routes by Host: `https://{vault}.vault.{domain}[:{port}]/`.
    Domain {
        /// The DNS domain (e.g. `hds.example.org`).
        domain: String,
        /// The public port, when not 443.
        port: Option<u16>,
    },
}

impl VaultAddressing {
    /// The data plane URI of vault `name`, listening on `port` when addressed by port.
    fn vault_uri(&self, name: &str, port: Option<u16>) -> String {
        match self {
            VaultAddressing::Loopback { address }
            | VaultAddressing::Balanced {
                advertised: address,
                ..
            } => {
                let port = port.unwrap_or(443);
                match address {
                    IpAddr::V4(v4) => format!("https://{v4}:{port}/"),
                    IpAddr::V6(v6) => format!("https://[{v6}]:{port}/"),
                }
            }
            VaultAddressing::Domain { domain, port } => match port {
                Some(port) => format!(
                    "https://{}.vault.{domain}:{port}/",
                    name.to_ascii_lowercase()
                ),
                None => format!("https://{}.vault.{domain}/", name.to_ascii_lowercase()),
            },
        }
    }
}

impl KeyVaultService {
    /// Creates a vault or updates its settings (ARM PUT semantics). Returns the vault and
    /// whether it was created.
    pub async fn create_or_update_vault(
        &self,
        resource_id: &str,
        name: &str,
        properties: VaultProperties,
    ) -> Result<(Vault, bool), VaultError> {
        validate_vault_name(name)?;
        properties.validate()?;
        let now = self.now();
        let key = name.to_ascii_lowercase();
        let properties_json = serde_json::to_string(&properties)
            .map_err(|error| VaultError::Internal(error.to_string()))?;
        let mut transaction = self.database.begin_write().await?;
        // The port a new vault was given, held bound until its listener takes it; let go if
        // the vault is not created after all.
        let mut reserved = None;
        let existing = sqlx::query("SELECT properties FROM keyvault_vaults WHERE name = $1")
            .bind(&key)
            .fetch_optional(&mut *transaction)
            .await?;
        let created = match existing {
            Some(row) => {
                let current: VaultProperties = parse_properties(&row.try_get::<String, _>(0)?)?;
                properties.validate_update(&current)?;
                sqlx::query("UPDATE keyvault_vaults SET properties = $1, resource_id = $2, updated = $3 WHERE name = $4")
                    .bind(&properties_json)
                    .bind(resource_id)
                    .bind(now)
                    .bind(&key)
                    .execute(&mut *transaction)
                    .await?;
                false
            }
            None => {
                let used: Vec<i64> = match &self.config.addressing {
                    VaultAddressing::Domain { .. } => Vec::new(),
                    _ => sqlx::query("SELECT port FROM keyvault_vaults WHERE port IS NOT NULL")
                        .fetch_all(&mut *transaction)
                        .await?
                        .iter()
                        .map(|row| row.try_get::<i64, _>(0))
                        .collect::<Result<_, _>>()?,
                };
                reserved = match &self.config.addressing {
                    VaultAddressing::Loopback { address } => {
                        Some(SocketAddr::new(*address, allocate_port(*address, &used)?))
                    }
                    VaultAddressing::Balanced { bind, ports, .. } => Some(SocketAddr::new(
                        *bind,
                        allocate_port_in(*bind, *ports, &used)?,
                    )),
                    VaultAddressing::Domain { .. } => None,
                };
                let port = reserved.map(|address| i64::from(address.port()));
                let inserted = sqlx::query(
                    "INSERT INTO keyvault_vaults (name, display_name, resource_id, properties, port, created, updated) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6)",
                )
                .bind(&key)
                .bind(name)
                .bind(resource_id)
                .bind(&properties_json)
                .bind(port)
                .bind(now)
                .execute(&mut *transaction)
                .await;
                if let Err(error) = inserted {
                    reserved.into_iter().for_each(release_port);
                    return Err(error.into());
                }
                true
            }
        };
        if let Err(error) = transaction.commit().await {
            reserved.into_iter().for_each(release_port);
            return Err(error.into());
        }
        Ok((self.get_vault(name).await?, created))
    }

    /// A vault by name (case-insensitive).
    pub async fn get_vault(&self, name: &str) -> Result<Vault, VaultError> {
        let row = sqlx::query(&format!("{VAULT_SELECT} WHERE name = $1"))
            .bind(name.to_ascii_lowercase())
            .fetch_optional(self.database.pool())
            .await?
            .ok_or_else(|| VaultError::VaultNotFound(name.to_owned()))?;
        self.vault_from_row(&row)
    }

    /// Every vault.
    pub async fn list_vaults(&self) -> Result<Vec<Vault>, VaultError> {
        let rows = sqlx::query(&format!("{VAULT_SELECT} ORDER BY name"))
            .fetch_all(self.database.pool())
            .await?;
        rows.iter().map(|row| self.vault_from_row(row)).collect()
    }

    /// Deletes a vault and every key in it. Vaults themselves are not soft-deleted, so a
    /// purge-protected vault is refused while it holds any key (live, or deleted and not yet
    /// past its retention): deleting it would purge keys that purge protection promises to
    /// keep. Returns whether the vault existed.
    pub async fn delete_vault(&self, name: &str) -> Result<bool, VaultError> {
        let key = name.to_ascii_lowercase();
        let vault = match self.get_vault(name).await {
            Ok(vault) => vault,
            Err(VaultError::VaultNotFound(_)) => return Ok(false),
            Err(error) => return Err(error),
        };
        let mut transaction = self.database.begin_write().await?;
        let mut token_objects = Vec::new();
        if vault.properties.enable_purge_protection {
            token_objects.extend(self.purge_expired(&mut transaction, &key).await?);
            let held: i64 = sqlx::query("SELECT COUNT(*) FROM keyvault_keys WHERE vault = $1")
                .bind(&key)
                .fetch_one(&mut *transaction)
                .await?
                .try_get(0)?;
            if held > 0 {
                return Err(VaultError::VaultNotEmpty(vault.name));
            }
        }
        token_objects.extend(token_objects_of(&mut transaction, &key, None).await?);
        sqlx::query("DELETE FROM keyvault_rotation_policies WHERE vault = $1")
            .bind(&key)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("DELETE FROM keyvault_key_versions WHERE vault = $1")
            .bind(&key)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("DELETE FROM keyvault_keys WHERE vault = $1")
            .bind(&key)
            .execute(&mut *transaction)
            .await?;
        let deleted = sqlx::query("DELETE FROM keyvault_vaults WHERE name = $1")
            .bind(&key)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        transaction.commit().await?;
        self.opened_keys.forget(&format!("{key}/"));
        self.destroy_token_objects(token_objects);
        Ok(deleted > 0)
    }

    /// A vault row as read by [`VAULT_SELECT`], with its URI under the configured addressing.
    fn vault_from_row(&self, row: &AnyRow) -> Result<Vault, VaultError> {
        let name: String = row.try_get("display_name")?;
        let port: Option<i64> = row.try_get("port")?;
        let port = port.and_then(|port| u16::try_from(port).ok());
        let vault_uri = self.config.addressing.vault_uri(&name, port);
        Ok(Vault {
            name,
            resource_id: row.try_get("resource_id")?,
            properties: parse_properties(&row.try_get::<String, _>("properties")?)?,
            port,
            vault_uri,
            created: row.try_get("created")?,
            updated: row.try_get("updated")?,
        })
    }
}

/// Stored settings; a row that does not parse is an internal error, never a default.
fn parse_properties(text: &str) -> Result<VaultProperties, VaultError> {
    serde_json::from_str(text)
        .map_err(|error| VaultError::Internal(format!("stored vault properties: {error}")))
}

/// Vault names: 3-24 characters, letters, digits and single hyphens, starting with a letter
/// and ending with a letter or digit (they become DNS labels).
pub fn validate_vault_name(name: &str) -> Result<(), VaultError> {
    let bytes = name.as_bytes();
    let valid = (3..=24).contains(&bytes.len())
        && bytes[0].is_ascii_alphabetic()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(VaultError::BadParameter(format!(
            "vault name '{name}' is invalid: use 3-24 letters, digits and single hyphens, starting with a letter and ending with a letter or digit"
        )))
    }
}

/// The first port of `range` free on `address` that no vault holds, held bound until the
/// vault's listener takes it. Nodes creating vaults at
/// once may pick the same one: the unique index on the port lets one of them commit (the other
/// creation fails and can be retried).
fn allocate_port_in(address: IpAddr, range: (u16, u16), used: &[i64]) -> Result<u16, VaultError> {
    (range.0..=range.1)
        .filter(|port| !used.contains(&i64::from(*port)))
        .find_map(|port| {
            let listener = TcpListener::bind((address, port)).ok()?;
            reserve_port(listener).ok()
        })
        .ok_or_else(|| {
            VaultError::Internal(format!(
                "no free vault port left in {}-{}",
                range.0, range.1
            ))
        })
}

/// A free port on `address` that no other vault holds, held bound until the vault's listener
/// takes it (`crate::listeners`).
fn allocate_port(address: IpAddr, used: &[i64]) -> Result<u16, VaultError> {
    for _ in 0..32 {
        let listener = TcpListener::bind((address, 0)).map_err(|error| {
            VaultError::Internal(format!("cannot allocate a vault port: {error}"))
        })?;
        let port = listener
            .local_addr()
            .map_err(|error| {
                VaultError::Internal(format!("cannot allocate a vault port: {error}"))
            })?
            .port();
        if !used.contains(&i64::from(port)) {
            return reserve_port(listener).map_err(|error| {
                VaultError::Internal(format!("cannot allocate a vault port: {error}"))
            });
        }
    }
    Err(VaultError::Internal(
        "cannot allocate a free vault port".into(),
    ))
}
