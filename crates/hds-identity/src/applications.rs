//! App registrations, their service principals and password credentials: the directory objects
//! Microsoft Graph calls `application` and `servicePrincipal`, as far as `az ad app` and
//! `az ad sp` use them.
//!
//! - An **application** has an object id, an `appId` (the client id it signs in with, unique)
//!   and a display name (not unique, as in Graph).
//! - Its **service principal** is the principal that role assignments name and tokens carry
//!   (`oid`); it is a row of `identity_principals` whose client id is the application's
//!   `appId`, so there is at most one per application. Without it the application cannot sign
//!   in. Deleting the application deletes it too.
//! - A **password credential** belongs to the application or to its service principal and lets
//!   the `appId` sign in between its start and end. The secret is made here, shown once, and
//!   stored as HMAC-SHA256 under the root-key-derived key, like the admin's secret; an expired
//!   one is refused at the token endpoint.
//!
//! Who may: every read and write here needs [`Identity::may_manage_applications`]: the right to
//! write role assignments (Owner, User Access Administrator) on the tenant's subscription or
//! above. Whoever can grant roles there can already hand any principal any access; nobody else
//! may mint principals, or even list them (Graph refuses an app without directory permissions).
//! Deleting a principal empties this process's access cache; other nodes refuse its tokens
//! when their cached entry expires (5 s).

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use serde::Serialize;
use sqlx::Row;
use zeroize::Zeroizing;

use crate::principals::{Principal, PrincipalKind, new_client_secret};
use crate::roles::actions;
use crate::{Identity, IdentityError, new_guid, now_unix};

/// The longest display name of an application or a credential, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
/// The most password credentials one application or service principal may hold.
pub const MAX_PASSWORDS_PER_OBJECT: usize = 16;
/// The most applications one tenant may hold.
pub const MAX_APPLICATIONS: i64 = 10_000;
/// The longest a client secret may stay valid from now: ten years.
pub const MAX_SECRET_LIFETIME_SECONDS: i64 = 10 * 366 * 24 * 3600;
/// A secret's lifetime when the request names no end (Graph's default: two years).
pub const DEFAULT_SECRET_LIFETIME_SECONDS: i64 = 2 * 365 * 24 * 3600;

/// An app registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    /// The object id (`id` in Graph).
    pub object_id: String,
    /// The application (client) id.
    pub app_id: String,
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// A name for people; not unique.
    pub display_name: String,
    /// When it was created (Unix seconds).
    pub created_at: i64,
}

/// A password credential as Graph lists it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PasswordCredential {
    /// Its id, which `removePassword` names.
    pub key_id: String,
    /// A name for people.
    pub display_name: Option<String>,
    /// The first three characters of the secret, to tell secrets apart.
    pub hint: String,
    /// From when it signs in (Unix seconds).
    pub start: i64,
    /// Until when it signs in (Unix seconds, exclusive).
    pub end: i64,
}

/// A new password credential with its secret, which exists only here.
pub struct NewPassword {
    /// The stored credential.
    pub credential: PasswordCredential,
    /// The secret, shown once.
    pub secret_text: Zeroizing<String>,
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NewPassword")
            .field("credential", &self.credential)
            .field("secret_text", &"<redacted>")
            .finish()
    }
}

/// What `addPassword` asks for; every field optional.
#[derive(Debug, Clone, Default)]
pub struct PasswordRequest {
    /// A name for people.
    pub display_name: Option<String>,
    /// From when (Unix seconds); now when absent.
    pub start: Option<i64>,
    /// Until when (Unix seconds); [`DEFAULT_SECRET_LIFETIME_SECONDS`] from the start when absent.
    pub end: Option<i64>,
}

/// Which directory object a credential operation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialOwner {
    /// An application, by object id.
    Application,
    /// The service principal of an application, by object id.
    ServicePrincipal,
}

/// What a presented client secret turned out to be.
pub(crate) enum SecretCheck {
    /// It is a current secret of this principal.
    Valid(Principal),
    /// It was a secret of this client, but is expired or not yet valid.
    Expired,
    /// Anything else.
    Invalid,
}

/// Checks a display name: present, not blank, no control characters, bounded.
pub fn check_display_name(name: &str, what: &str) -> Result<(), IdentityError> {
    if name.trim().is_empty() {
        return Err(IdentityError::InvalidArgument(format!(
            "{what} must not be empty"
        )));
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(IdentityError::InvalidArgument(format!(
            "{what} is longer than {MAX_DISPLAY_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(IdentityError::InvalidArgument(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

const APPLICATION_COLUMNS: &str = "object_id, app_id, tenant_id, display_name, created_at";

fn application_from_row(row: &sqlx::any::AnyRow) -> Result<Application, IdentityError> {
    Ok(Application {
        object_id: row.try_get(0)?,
        app_id: row.try_get(1)?,
        tenant_id: row.try_get(2)?,
        display_name: row.try_get(3)?,
        created_at: row.try_get(4)?,
    })
}

impl Identity {
    /// Whether `principal_id` may create, read and delete applications, service principals and
    /// their credentials: it holds `Microsoft.Authorization/roleAssignments/write` on the
    /// tenant's subscription (or at the root). Deny by default.
    pub async fn may_manage_applications(&self, principal_id: &str) -> Result<bool, IdentityError> {
        let Some(subscription) =
            crate::bootstrap::read_meta(self.database(), crate::bootstrap::META_SUBSCRIPTION)
                .await?
        else {
            return Ok(false);
        };
        Ok(self
            .authorize(
                principal_id,
                actions::ROLE_ASSIGNMENTS_WRITE,
                &format!("/subscriptions/{subscription}"),
                false,
            )
            .await?
            .is_allowed())
    }

    /// Registers an application (no service principal yet, no credentials).
    pub async fn create_application(
        &self,
        display_name: &str,
    ) -> Result<Application, IdentityError> {
        check_display_name(display_name, "displayName")?;
        let tenant_id = self.default_tenant().await?;
        let mut transaction = self.database().begin_write().await?;
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM identity_applications")
            .fetch_one(&mut *transaction)
            .await?
            .try_get(0)?;
        if count >= MAX_APPLICATIONS {
            return Err(IdentityError::LimitReached(format!(
                "a tenant holds at most {MAX_APPLICATIONS} applications"
            )));
        }
        let application = Application {
            object_id: new_guid(),
            app_id: new_guid(),
            tenant_id,
            display_name: display_name.to_owned(),
            created_at: now_unix(),
        };
        sqlx::query(&format!(
            "INSERT INTO identity_applications ({APPLICATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(&application.object_id)
        .bind(&application.app_id)
        .bind(&application.tenant_id)
        .bind(&application.display_name)
        .bind(application.created_at)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(application)
    }

    /// The application with object id `object_id`.
    pub async fn application(&self, object_id: &str) -> Result<Option<Application>, IdentityError> {
        let row = sqlx::query(&format!(
            "SELECT {APPLICATION_COLUMNS} FROM identity_applications WHERE object_id = $1"
        ))
        .bind(object_id.to_ascii_lowercase())
        .fetch_optional(self.database().pool())
        .await?;
        row.as_ref().map(application_from_row).transpose()
    }

    /// The application whose client id is `app_id`.
    pub async fn application_by_app_id(
        &self,
        app_id: &str,
    ) -> Result<Option<Application>, IdentityError> {
        let row = sqlx::query(&format!(
            "SELECT {APPLICATION_COLUMNS} FROM identity_applications WHERE app_id = $1"
        ))
        .bind(app_id.to_ascii_lowercase())
        .fetch_optional(self.database().pool())
        .await?;
        row.as_ref().map(application_from_row).transpose()
    }

    /// Every application, by object id (at most [`MAX_APPLICATIONS`]).
    pub async fn applications(&self) -> Result<Vec<Application>, IdentityError> {
        sqlx::query(&format!(
            "SELECT {APPLICATION_COLUMNS} FROM identity_applications ORDER BY object_id"
        ))
        .fetch_all(self.database().pool())
        .await?
        .iter()
        .map(application_from_row)
        .collect()
    }

    /// Renames an application (and its service principal, which shows the same name).
    pub async fn rename_application(
        &self,
        object_id: &str,
        display_name: &str,
    ) -> Result<Option<Application>, IdentityError> {
        check_display_name(display_name, "displayName")?;
        let Some(application) = self.application(object_id).await? else {
            return Ok(None);
        };
        let mut transaction = self.database().begin_write().await?;
        sqlx::query("UPDATE identity_applications SET display_name = $1 WHERE object_id = $2")
            .bind(display_name)
            .bind(&application.object_id)
            .execute(&mut *transaction)
            .await?;
        sqlx::query(
            "UPDATE identity_principals SET display_name = $1 WHERE client_id = $2 AND kind = $3",
        )
        .bind(display_name)
        .bind(&application.app_id)
        .bind(PrincipalKind::ServicePrincipal.as_stored())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        self.inner.access_cache.invalidate();
        self.application(object_id).await
    }

    /// Deletes an application with its service principal, the principal's role assignments and
    /// every credential of either: its tokens stop working here at once, on other nodes within
    /// the access cache's bound. Returns whether it existed.
    pub async fn delete_application(&self, object_id: &str) -> Result<bool, IdentityError> {
        let Some(application) = self.application(object_id).await? else {
            return Ok(false);
        };
        let mut transaction = self.database().begin_write().await?;
        sqlx::query(
            "DELETE FROM identity_role_assignments WHERE principal_id IN \
             (SELECT principal_id FROM identity_principals WHERE client_id = $1 AND kind = $2)",
        )
        .bind(&application.app_id)
        .bind(PrincipalKind::ServicePrincipal.as_stored())
        .execute(&mut *transaction)
        .await?;
        sqlx::query("DELETE FROM identity_principals WHERE client_id = $1 AND kind = $2")
            .bind(&application.app_id)
            .bind(PrincipalKind::ServicePrincipal.as_stored())
            .execute(&mut *transaction)
            .await?;
        sqlx::query("DELETE FROM identity_password_credentials WHERE app_id = $1")
            .bind(&application.app_id)
            .execute(&mut *transaction)
            .await?;
        let deleted = sqlx::query("DELETE FROM identity_applications WHERE object_id = $1")
            .bind(&application.object_id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        self.inner.access_cache.invalidate();
        Ok(deleted.rows_affected() > 0)
    }

    /// Creates the service principal of the application whose client id is `app_id`.
    /// [`IdentityError::ApplicationNotFound`] when there is none; [`IdentityError::Conflict`]
    /// when it has one already (one per application, as in a Graph tenant).
    pub async fn create_application_service_principal(
        &self,
        app_id: &str,
    ) -> Result<Principal, IdentityError> {
        let application = self
            .application_by_app_id(app_id)
            .await?
            .ok_or(IdentityError::ApplicationNotFound)?;
        let principal_id = new_guid();
        let inserted = sqlx::query(
            "INSERT INTO identity_principals (principal_id, tenant_id, kind, client_id, display_name, secret_hash, resource_key, resource_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, NULL, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&principal_id)
        .bind(&application.tenant_id)
        .bind(PrincipalKind::ServicePrincipal.as_stored())
        .bind(&application.app_id)
        .bind(&application.display_name)
        .bind(now_unix())
        .execute(self.database().pool())
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(IdentityError::Conflict(format!(
                "the application {} already has a service principal",
                application.app_id
            )));
        }
        self.inner.access_cache.invalidate();
        self.principal(&principal_id)
            .await?
            .ok_or(IdentityError::Corrupt(
                "service principal vanished after insert",
            ))
    }

    /// Every principal of the directory (service principals of applications, the bootstrap
    /// admin, managed identities), by object id.
    pub async fn principals(&self) -> Result<Vec<Principal>, IdentityError> {
        sqlx::query(&format!(
            "SELECT {} FROM identity_principals ORDER BY principal_id",
            crate::principals::PRINCIPAL_COLUMNS
        ))
        .fetch_all(self.database().pool())
        .await?
        .iter()
        .map(crate::principals::principal_from_row)
        .collect()
    }

    /// The service principal `object_id` when it belongs to an application (the only kind
    /// Graph may delete or give passwords to here): the bootstrap admin is managed by `hds`
    /// itself and a managed identity by its resource.
    pub async fn application_service_principal(
        &self,
        object_id: &str,
    ) -> Result<Option<(Principal, Application)>, IdentityError> {
        let Some(principal) = self.principal(&object_id.to_ascii_lowercase()).await? else {
            return Ok(None);
        };
        if principal.kind != PrincipalKind::ServicePrincipal {
            return Ok(None);
        }
        Ok(self
            .application_by_app_id(&principal.client_id)
            .await?
            .map(|application| (principal, application)))
    }

    /// Deletes the service principal of an application (the application stays), with its role
    /// assignments and its own credentials. Returns whether it existed;
    /// [`IdentityError::NotPermitted`] for a principal that is not an application's.
    pub async fn delete_application_service_principal(
        &self,
        object_id: &str,
    ) -> Result<bool, IdentityError> {
        let object_id = object_id.to_ascii_lowercase();
        if self.principal(&object_id).await?.is_none() {
            return Ok(false);
        }
        let Some((principal, _)) = self.application_service_principal(&object_id).await? else {
            return Err(IdentityError::NotPermitted(
                "only the service principal of an application can be deleted through Graph; managed identities go with their resource, the bootstrap admin with 'hds'".to_owned(),
            ));
        };
        let mut transaction = self.database().begin_write().await?;
        sqlx::query("DELETE FROM identity_role_assignments WHERE principal_id = $1")
            .bind(&principal.principal_id)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("DELETE FROM identity_password_credentials WHERE owner_id = $1")
            .bind(&principal.principal_id)
            .execute(&mut *transaction)
            .await?;
        let deleted = sqlx::query("DELETE FROM identity_principals WHERE principal_id = $1")
            .bind(&principal.principal_id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        self.inner.access_cache.invalidate();
        Ok(deleted.rows_affected() > 0)
    }

    /// The password credentials of one object, oldest first (never the secrets).
    pub async fn password_credentials(
        &self,
        owner_id: &str,
    ) -> Result<Vec<PasswordCredential>, IdentityError> {
        let rows = sqlx::query(
            "SELECT key_id, display_name, hint, start_at, end_at FROM identity_password_credentials \
             WHERE owner_id = $1 ORDER BY created_at, key_id",
        )
        .bind(owner_id.to_ascii_lowercase())
        .fetch_all(self.database().pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PasswordCredential {
                    key_id: row.try_get(0)?,
                    display_name: row.try_get(1)?,
                    hint: row.try_get(2)?,
                    start: row.try_get(3)?,
                    end: row.try_get(4)?,
                })
            })
            .collect()
    }

    /// The object id and client id a credential operation on `object_id` applies to.
    async fn credential_owner(
        &self,
        owner: CredentialOwner,
        object_id: &str,
    ) -> Result<(String, String), IdentityError> {
        match owner {
            CredentialOwner::Application => self
                .application(object_id)
                .await?
                .map(|application| (application.object_id, application.app_id))
                .ok_or(IdentityError::ApplicationNotFound),
            CredentialOwner::ServicePrincipal => self
                .application_service_principal(object_id)
                .await?
                .map(|(principal, _)| (principal.principal_id, principal.client_id))
                .ok_or(IdentityError::PrincipalNotFound),
        }
    }

    /// Adds a password credential to an application or its service principal and returns its
    /// secret, which is not stored and cannot be shown again.
    pub async fn add_password(
        &self,
        owner: CredentialOwner,
        object_id: &str,
        request: &PasswordRequest,
    ) -> Result<NewPassword, IdentityError> {
        if let Some(name) = &request.display_name {
            check_display_name(name, "passwordCredential.displayName")?;
        }
        let now = now_unix();
        let start = request.start.unwrap_or(now);
        let end = request
            .end
            .unwrap_or_else(|| start.saturating_add(DEFAULT_SECRET_LIFETIME_SECONDS));
        if end <= start {
            return Err(IdentityError::InvalidArgument(
                "passwordCredential.endDateTime must be after its startDateTime".to_owned(),
            ));
        }
        if end <= now {
            return Err(IdentityError::InvalidArgument(
                "passwordCredential.endDateTime must be in the future".to_owned(),
            ));
        }
        if end - now > MAX_SECRET_LIFETIME_SECONDS {
            return Err(IdentityError::InvalidArgument(
                "passwordCredential.endDateTime may be at most ten years from now".to_owned(),
            ));
        }
        if start - now > MAX_SECRET_LIFETIME_SECONDS {
            return Err(IdentityError::InvalidArgument(
                "passwordCredential.startDateTime is too far in the future".to_owned(),
            ));
        }
        let (owner_id, app_id) = self.credential_owner(owner, object_id).await?;
        let secret = new_client_secret()?;
        let credential = PasswordCredential {
            key_id: new_guid(),
            display_name: request.display_name.clone(),
            hint: secret.chars().take(3).collect(),
            start,
            end,
        };
        let mut transaction = self.database().begin_write().await?;
        let count: i64 =
            sqlx::query("SELECT COUNT(*) FROM identity_password_credentials WHERE owner_id = $1")
                .bind(&owner_id)
                .fetch_one(&mut *transaction)
                .await?
                .try_get(0)?;
        if count >= MAX_PASSWORDS_PER_OBJECT as i64 {
            return Err(IdentityError::LimitReached(format!(
                "an object holds at most {MAX_PASSWORDS_PER_OBJECT} password credentials"
            )));
        }
        sqlx::query(
            "INSERT INTO identity_password_credentials (key_id, owner_id, app_id, display_name, hint, secret_hash, start_at, end_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&credential.key_id)
        .bind(&owner_id)
        .bind(&app_id)
        .bind(&credential.display_name)
        .bind(&credential.hint)
        .bind(self.hash_client_secret(&secret))
        .bind(start)
        .bind(end)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(NewPassword {
            credential,
            secret_text: secret,
        })
    }

    /// Removes a password credential: it stops signing in at once (tokens already issued with
    /// it stay valid until they expire, as in Entra). Returns whether it existed.
    pub async fn remove_password(
        &self,
        owner: CredentialOwner,
        object_id: &str,
        key_id: &str,
    ) -> Result<bool, IdentityError> {
        let (owner_id, _) = self.credential_owner(owner, object_id).await?;
        let deleted = sqlx::query(
            "DELETE FROM identity_password_credentials WHERE owner_id = $1 AND key_id = $2",
        )
        .bind(&owner_id)
        .bind(key_id.to_ascii_lowercase())
        .execute(self.database().pool())
        .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Checks a client secret presented for `client_id`: the service principal's own secret
    /// (the bootstrap admin's) or a password credential of its application or of itself. The
    /// secret's HMAC is computed once, whatever the client id, and compared in constant time
    /// with each stored tag.
    pub(crate) async fn check_secret(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<SecretCheck, IdentityError> {
        let presented = hmac::sign(&self.inner.secret_hash_key, client_secret.as_bytes());
        let row = sqlx::query(&format!(
            "SELECT {}, secret_hash FROM identity_principals WHERE client_id = $1 AND kind = $2",
            crate::principals::PRINCIPAL_COLUMNS
        ))
        .bind(client_id)
        .bind(PrincipalKind::ServicePrincipal.as_stored())
        .fetch_optional(self.database().pool())
        .await?;
        let Some(row) = row else {
            return Ok(SecretCheck::Invalid);
        };
        let matches = |stored: &str| {
            hex::decode(stored)
                .ok()
                .is_some_and(|tag| verify_slices_are_equal(&tag, presented.as_ref()).is_ok())
        };
        let principal = crate::principals::principal_from_row(&row)?;
        let own: Option<String> = row.try_get(6)?;
        if own.as_deref().is_some_and(matches) {
            return Ok(SecretCheck::Valid(principal));
        }
        let credentials = sqlx::query(
            "SELECT secret_hash, start_at, end_at FROM identity_password_credentials WHERE app_id = $1",
        )
        .bind(client_id)
        .fetch_all(self.database().pool())
        .await?;
        let now = now_unix();
        for credential in credentials {
            let stored: String = credential.try_get(0)?;
            if !matches(&stored) {
                continue;
            }
            let start: i64 = credential.try_get(1)?;
            let end: i64 = credential.try_get(2)?;
            return Ok(if start <= now && now < end {
                SecretCheck::Valid(principal)
            } else {
                SecretCheck::Expired
            });
        }
        Ok(SecretCheck::Invalid)
    }
}
