//! Principals: service principals (client id + secret) and managed identities.
//!
//! A client secret is shown once, when it is made, and stored only as HMAC-SHA256 under a key
//! derived from the root key: a copy of the database alone does not let anyone test guesses.
//! Checking a secret compares tags in constant time.

use std::sync::Arc;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use zeroize::Zeroizing;

use crate::access_cache::PrincipalAccess;
use crate::scope::scope_key;
use crate::{Identity, IdentityError, jws, new_guid, now_unix};

/// What kind of principal an object id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum PrincipalKind {
    /// An application registration with a client secret.
    ServicePrincipal,
    /// A system-assigned managed identity, living and dying with one resource.
    SystemAssignedIdentity,
    /// A user-assigned managed identity, a `Microsoft.ManagedIdentity/userAssignedIdentities`
    /// resource of its own.
    UserAssignedIdentity,
}

impl PrincipalKind {
    pub(crate) fn as_stored(self) -> &'static str {
        match self {
            PrincipalKind::ServicePrincipal => "ServicePrincipal",
            PrincipalKind::SystemAssignedIdentity => "SystemAssigned",
            PrincipalKind::UserAssignedIdentity => "UserAssigned",
        }
    }

    fn from_stored(stored: &str) -> Result<PrincipalKind, IdentityError> {
        match stored {
            "ServicePrincipal" => Ok(PrincipalKind::ServicePrincipal),
            "SystemAssigned" => Ok(PrincipalKind::SystemAssignedIdentity),
            "UserAssigned" => Ok(PrincipalKind::UserAssignedIdentity),
            _ => Err(IdentityError::Corrupt("unknown principal kind")),
        }
    }
}

/// Which kind of managed identity to create or look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagedIdentityKind {
    /// Tied to the resource that enabled it (`identity.type = SystemAssigned`).
    SystemAssigned,
    /// Tied to a `Microsoft.ManagedIdentity/userAssignedIdentities` resource.
    UserAssigned,
}

impl ManagedIdentityKind {
    fn principal_kind(self) -> PrincipalKind {
        match self {
            ManagedIdentityKind::SystemAssigned => PrincipalKind::SystemAssignedIdentity,
            ManagedIdentityKind::UserAssigned => PrincipalKind::UserAssignedIdentity,
        }
    }
}

/// A principal as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// The object id (`oid` in tokens, `principalId` in ARM).
    pub principal_id: String,
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// The application (client) id (`appid` in tokens, `clientId` in ARM).
    pub client_id: String,
    /// What kind of principal it is.
    pub kind: PrincipalKind,
    /// A name for people.
    pub display_name: String,
    /// For managed identities: the resource id it is tied to, as first given.
    pub resource_id: Option<String>,
}

/// A managed identity: what ARM shows in a resource's `identity` block
/// (`principalId`, `tenantId`, and `clientId` for user-assigned ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIdentity {
    /// The object id.
    pub principal_id: String,
    /// The client id.
    pub client_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The resource it is tied to.
    pub resource_id: String,
}

/// The credentials of a new service principal, or a new secret for one. The secret exists
/// only here: it is not stored and cannot be shown again.
#[derive(Clone)]
pub struct ServicePrincipalCredentials {
    /// The object id.
    pub principal_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The client id to present at the token endpoint.
    pub client_id: String,
    /// The client secret to present at the token endpoint.
    pub client_secret: Zeroizing<String>,
}

impl std::fmt::Debug for ServicePrincipalCredentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServicePrincipalCredentials")
            .field("principal_id", &self.principal_id)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

pub(crate) const PRINCIPAL_COLUMNS: &str =
    "principal_id, tenant_id, client_id, kind, display_name, resource_id";

pub(crate) fn principal_from_row(row: &AnyRow) -> Result<Principal, IdentityError> {
    let kind: String = row.try_get(3)?;
    Ok(Principal {
        principal_id: row.try_get(0)?,
        tenant_id: row.try_get(1)?,
        client_id: row.try_get(2)?,
        kind: PrincipalKind::from_stored(&kind)?,
        display_name: row.try_get(4)?,
        resource_id: row.try_get(5)?,
    })
}

/// A fresh client secret: 30 random bytes, base64url (40 characters).
///
/// A secret never begins with `-` or `_`: command lines (`az login --password SECRET`, getopt
/// parsers generally) read a leading `-` as an option, so one secret in 32 would fail to sign in
/// for no visible reason. Redrawing keeps every secret uniformly random among the allowed ones.
pub(crate) fn new_client_secret() -> Result<Zeroizing<String>, IdentityError> {
    let random = SystemRandom::new();
    loop {
        let mut bytes = Zeroizing::new([0u8; 30]);
        random
            .fill(bytes.as_mut())
            .map_err(|_| IdentityError::Crypto)?;
        let secret = Zeroizing::new(jws::base64url(bytes.as_ref()));
        if secret.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Ok(secret);
        }
    }
}

impl Identity {
    pub(crate) fn hash_client_secret(&self, secret: &str) -> String {
        hex::encode(hmac::sign(&self.inner.secret_hash_key, secret.as_bytes()).as_ref())
    }

    /// Creates a service principal in the default tenant, with a new client secret.
    pub async fn create_service_principal(
        &self,
        display_name: &str,
    ) -> Result<ServicePrincipalCredentials, IdentityError> {
        let tenant_id = self.default_tenant().await?;
        let mut transaction = self.database().begin_write().await?;
        let credentials = self
            .insert_service_principal(&mut transaction, &tenant_id, display_name)
            .await?;
        transaction.commit().await?;
        self.inner.access_cache.invalidate();
        Ok(credentials)
    }

    pub(crate) async fn insert_service_principal(
        &self,
        transaction: &mut hds_db::WriteTransaction,
        tenant_id: &str,
        display_name: &str,
    ) -> Result<ServicePrincipalCredentials, IdentityError> {
        let principal_id = new_guid();
        let client_id = new_guid();
        let client_secret = new_client_secret()?;
        sqlx::query(
            "INSERT INTO identity_principals (principal_id, tenant_id, kind, client_id, display_name, secret_hash, resource_key, resource_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7)",
        )
        .bind(&principal_id)
        .bind(tenant_id)
        .bind(PrincipalKind::ServicePrincipal.as_stored())
        .bind(&client_id)
        .bind(display_name)
        .bind(self.hash_client_secret(&client_secret))
        .bind(now_unix())
        .execute(&mut **transaction)
        .await?;
        Ok(ServicePrincipalCredentials {
            principal_id,
            tenant_id: tenant_id.to_owned(),
            client_id,
            client_secret,
        })
    }

    /// Replaces a service principal's client secret; the old one stops working at once.
    pub async fn reset_client_secret(
        &self,
        principal_id: &str,
    ) -> Result<ServicePrincipalCredentials, IdentityError> {
        let principal = self
            .principal(principal_id)
            .await?
            .filter(|principal| principal.kind == PrincipalKind::ServicePrincipal)
            .ok_or(IdentityError::PrincipalNotFound)?;
        let client_secret = new_client_secret()?;
        let updated = sqlx::query(
            "UPDATE identity_principals SET secret_hash = $1 WHERE principal_id = $2 AND kind = $3",
        )
        .bind(self.hash_client_secret(&client_secret))
        .bind(principal_id)
        .bind(PrincipalKind::ServicePrincipal.as_stored())
        .execute(self.database().pool())
        .await?;
        if updated.rows_affected() == 0 {
            return Err(IdentityError::PrincipalNotFound);
        }
        Ok(ServicePrincipalCredentials {
            principal_id: principal.principal_id,
            tenant_id: principal.tenant_id,
            client_id: principal.client_id,
            client_secret,
        })
    }

    /// The principal with object id `principal_id`.
    pub async fn principal(&self, principal_id: &str) -> Result<Option<Principal>, IdentityError> {
        let row = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM identity_principals WHERE principal_id = $1"
        ))
        .bind(principal_id)
        .fetch_optional(self.database().pool())
        .await?;
        row.as_ref().map(principal_from_row).transpose()
    }

    /// The principal and its role assignments, from the access cache when fresh (see
    /// [`crate::access_cache`]): what every authenticated request checks.
    pub(crate) async fn principal_access(
        &self,
        principal_id: &str,
    ) -> Result<Arc<PrincipalAccess>, IdentityError> {
        let cache = &self.inner.access_cache;
        if let Some(access) = cache.principal(principal_id) {
            return Ok(access);
        }
        let generation = cache.generation();
        let principal = self.principal(principal_id).await?;
        let assignments = sqlx::query(
            "SELECT scope_key, role_definition_name FROM identity_role_assignments WHERE principal_id = $1",
        )
        .bind(principal_id)
        .fetch_all(self.database().pool())
        .await?
        .iter()
        .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<(String, String)>, _>>()?;
        let access = Arc::new(PrincipalAccess {
            principal,
            assignments,
        });
        cache.remember_principal(principal_id, access.clone(), generation);
        Ok(access)
    }

    /// Creates the managed identity of `kind` tied to `resource_id`, or returns the one that
    /// exists: enabling a system-assigned identity again (any update of the resource) keeps
    /// its principal id, and a repeated PUT of a user-assigned identity keeps its ids.
    pub async fn create_managed_identity(
        &self,
        kind: ManagedIdentityKind,
        resource_id: &str,
    ) -> Result<ManagedIdentity, IdentityError> {
        let resource_key = managed_identity_resource_key(kind, resource_id)?;
        if let Some(existing) = self.managed_identity_by_key(kind, &resource_key).await? {
            return Ok(existing);
        }
        let tenant_id = self.default_tenant().await?;
        let display_name = resource_id
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(resource_id);
        sqlx::query(
            "INSERT INTO identity_principals (principal_id, tenant_id, kind, client_id, display_name, secret_hash, resource_key, resource_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(new_guid())
        .bind(&tenant_id)
        .bind(kind.principal_kind().as_stored())
        .bind(new_guid())
        .bind(display_name)
        .bind(&resource_key)
        .bind(resource_id.trim_end_matches('/'))
        .bind(now_unix())
        .execute(self.database().pool())
        .await?;
        self.inner.access_cache.invalidate();
        // Whoever won a concurrent insert, the stored row is the identity.
        self.managed_identity_by_key(kind, &resource_key)
            .await?
            .ok_or(IdentityError::Corrupt(
                "managed identity vanished after insert",
            ))
    }

    /// The managed identity of `kind` tied to `resource_id`, if there is one.
    pub async fn managed_identity(
        &self,
        kind: ManagedIdentityKind,
        resource_id: &str,
    ) -> Result<Option<ManagedIdentity>, IdentityError> {
        let resource_key = managed_identity_resource_key(kind, resource_id)?;
        self.managed_identity_by_key(kind, &resource_key).await
    }

    /// Deletes the managed identity of `kind` tied to `resource_id` (a system-assigned identity
    /// when its resource disables it or is deleted). Returns whether one existed.
    pub async fn delete_managed_identity(
        &self,
        kind: ManagedIdentityKind,
        resource_id: &str,
    ) -> Result<bool, IdentityError> {
        match self.managed_identity(kind, resource_id).await? {
            Some(identity) => self.delete_principal(&identity.principal_id).await,
            None => Ok(false),
        }
    }

    async fn managed_identity_by_key(
        &self,
        kind: ManagedIdentityKind,
        resource_key: &str,
    ) -> Result<Option<ManagedIdentity>, IdentityError> {
        let row = sqlx::query("SELECT principal_id, client_id, tenant_id, resource_id FROM identity_principals WHERE kind = $1 AND resource_key = $2")
            .bind(kind.principal_kind().as_stored())
            .bind(resource_key)
            .fetch_optional(self.database().pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let resource_id: Option<String> = row.try_get(3)?;
        Ok(Some(ManagedIdentity {
            principal_id: row.try_get(0)?,
            client_id: row.try_get(1)?,
            tenant_id: row.try_get(2)?,
            resource_id: resource_id
                .ok_or(IdentityError::Corrupt("managed identity without resource"))?,
        }))
    }

    /// Deletes a principal and its role assignments. Its tokens stop validating at once.
    /// Returns whether it existed.
    pub async fn delete_principal(&self, principal_id: &str) -> Result<bool, IdentityError> {
        let mut transaction = self.database().begin_write().await?;
        sqlx::query("DELETE FROM identity_role_assignments WHERE principal_id = $1")
            .bind(principal_id)
            .execute(&mut *transaction)
            .await?;
        let deleted = sqlx::query("DELETE FROM identity_principals WHERE principal_id = $1")
            .bind(principal_id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        self.inner.access_cache.invalidate();
        Ok(deleted.rows_affected() > 0)
    }
}

/// The lowercased resource id a managed identity is keyed by, checking that a user-assigned
/// identity's resource is of the right type.
fn managed_identity_resource_key(
    kind: ManagedIdentityKind,
    resource_id: &str,
) -> Result<String, IdentityError> {
    let key = scope_key(resource_id)
        .filter(|key| key != "/")
        .ok_or_else(|| {
            IdentityError::InvalidScope("a resource id must be an absolute path".to_owned())
        })?;
    if kind == ManagedIdentityKind::UserAssigned
        && !key.contains("/providers/microsoft.managedidentity/userassignedidentities/")
    {
        return Err(IdentityError::InvalidScope(
            "a user-assigned identity must be a Microsoft.ManagedIdentity/userAssignedIdentities resource".to_owned(),
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::new_client_secret;

    #[test]
    fn client_secrets_never_begin_like_a_command_line_option() {
        // One base64url secret in 32 would begin with '-' or '_'; 2,000 draws meet dozens.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let secret = new_client_secret().expect("random");
            assert_eq!(secret.len(), 40);
            assert!(
                secret.starts_with(|c: char| c.is_ascii_alphanumeric()),
                "a secret begins with {:?}",
                secret.chars().next()
            );
            assert!(seen.insert(secret.to_string()), "a secret repeated");
        }
    }
}
