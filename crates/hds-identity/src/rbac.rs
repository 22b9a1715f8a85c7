//! Role assignments and authorization.
//!
//! An assignment grants one role to one principal at one scope (the root `/`, a subscription,
//! a resource group or a resource) and everything below it. [`Identity::authorize`] allows an
//! action when some assignment covering the scope grants it through its role's (data)actions
//! minus that role's not(Data)Actions; otherwise it denies, naming the missing permission.

use std::fmt;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::roles::{RoleDefinition, role_definition, role_definition_by_id};
use crate::scope::{covers, display_scope, scope_key};
use crate::{Identity, IdentityError, now_unix};

/// What an assignment of a role should be: the body of a role-assignment PUT.
#[derive(Debug, Clone)]
pub struct RoleAssignmentRequest {
    /// Where it applies: `/subscriptions/{s}`, `/subscriptions/{s}/resourceGroups/{rg}`, a
    /// resource id, or `/`.
    pub scope: String,
    /// The assignment's name, a GUID (the last segment of its id).
    pub name: String,
    /// The role, as a `roleDefinitionId` with any scope prefix, or a bare GUID.
    pub role_definition_id: String,
    /// The principal's object id (a platform principal or an external one).
    pub principal_id: String,
    /// `ServicePrincipal`, `User`, `Group`...; defaults to `ServicePrincipal` when absent.
    pub principal_type: Option<String>,
}

/// A stored role assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignment {
    /// `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub id: String,
    /// The GUID name.
    pub name: String,
    /// The scope, as first given (minus a trailing slash).
    pub scope: String,
    /// `/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{guid}` when the
    /// scope is within a subscription, else the tenant-level form.
    pub role_definition_id: String,
    /// The principal's object id.
    pub principal_id: String,
    /// The principal's type.
    pub principal_type: String,
    /// When it was created (Unix seconds).
    pub created_at: i64,
}

impl RoleAssignment {
    /// The role this assignment grants.
    pub fn role_definition(&self) -> Option<&'static RoleDefinition> {
        role_definition_by_id(&self.role_definition_id)
    }
}

/// Which assignments [`Identity::list_role_assignments`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeFilter {
    /// Those that apply at the scope: at it or above it (ARM's `$filter=atScope()`).
    AtAndAbove,
    /// Those at, above or below the scope (ARM's unfiltered list).
    AtAboveAndBelow,
}

/// The answer of [`Identity::authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Some role assignment grants the action.
    Allow,
    /// None does.
    Deny(DenyReason),
}

impl Decision {
    /// Whether the action is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Why an action was denied: which permission was missing, where, for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyReason {
    /// The principal's object id.
    pub principal_id: String,
    /// The action that no assignment grants.
    pub action: String,
    /// Whether it is a data action.
    pub is_data_action: bool,
    /// The scope it was asked for.
    pub scope: String,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_data_action {
            "data action"
        } else {
            "action"
        };
        write!(
            formatter,
            "The client with object id '{}' does not have authorization to perform {kind} '{}' over scope '{}' or the scope is invalid.",
            self.principal_id, self.action, self.scope
        )
    }
}

const ASSIGNMENT_COLUMNS: &str =
    "name, scope, role_definition_name, principal_id, principal_type, created_at";

fn assignment_from_row(row: &AnyRow) -> Result<RoleAssignment, IdentityError> {
    let name: String = row.try_get(0)?;
    let scope: String = row.try_get(1)?;
    let role_name: String = row.try_get(2)?;
    Ok(RoleAssignment {
        id: assignment_id(&scope, &name),
        role_definition_id: role_definition_id_at(&scope, &role_name),
        name,
        scope,
        principal_id: row.try_get(3)?,
        principal_type: row.try_get(4)?,
        created_at: row.try_get(5)?,
    })
}

fn assignment_id(scope: &str, name: &str) -> String {
    let scope = if scope == "/" { "" } else { scope };
    format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
}

/// The role definition id as ARM shows it on an assignment: subscription-scoped when the
/// assignment is within a subscription.
fn role_definition_id_at(scope: &str, role_name: &str) -> String {
    let mut segments = scope.split('/').filter(|segment| !segment.is_empty());
    match (segments.next(), segments.next()) {
        (Some(first), Some(subscription)) if first.eq_ignore_ascii_case("subscriptions") => {
            format!(
                "/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/{role_name}"
            )
        }
        _ => format!("/providers/Microsoft.Authorization/roleDefinitions/{role_name}"),
    }
}

fn parse_guid(text: &str, what: &str) -> Result<String, IdentityError> {
    uuid::Uuid::parse_str(text)
        .map(|guid| guid.hyphenated().to_string())
        .map_err(|_| IdentityError::InvalidArgument(format!("{what} must be a GUID")))
}

impl Identity {
    /// The built-in role definitions.
    pub fn role_definitions(&self) -> &'static [RoleDefinition] {
        crate::roles::role_definitions()
    }

    /// Creates a role assignment. Repeating the same request returns the stored assignment
    /// (PUT is idempotent); the same name with other properties, or the same grant under
    /// another name, is a conflict, as in ARM. The principal need not exist here: assignments
    /// may name external principals, and ARM allows assigning before an identity replicates.
    pub async fn assign_role(
        &self,
        request: &RoleAssignmentRequest,
    ) -> Result<RoleAssignment, IdentityError> {
        let key = scope_key(&request.scope).ok_or_else(|| {
            IdentityError::InvalidScope("a scope must be an absolute path".to_owned())
        })?;
        let scope = display_scope(&request.scope);
        let name = parse_guid(&request.name, "a role assignment name")?;
        let role = role_definition_by_id(&request.role_definition_id)
            .ok_or(IdentityError::RoleDefinitionNotFound)?;
        if request.principal_id.is_empty() {
            return Err(IdentityError::InvalidArgument(
                "principalId is required".to_owned(),
            ));
        }
        let principal_type = request
            .principal_type
            .clone()
            .unwrap_or_else(|| "ServicePrincipal".to_owned());

        let mut transaction = self.database().begin_write().await?;
        let by_name = sqlx::query(&format!(
            "SELECT {ASSIGNMENT_COLUMNS}, scope_key FROM identity_role_assignments WHERE name = $1"
        ))
        .bind(&name)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(row) = by_name {
            let existing = assignment_from_row(&row)?;
            let existing_key: String = row.try_get(6)?;
            let same = existing_key == key
                && existing.principal_id == request.principal_id
                && existing
                    .role_definition()
                    .is_some_and(|existing_role| existing_role.name == role.name);
            return if same {
                Ok(existing)
            } else {
                Err(IdentityError::RoleAssignmentUpdateNotPermitted)
            };
        }
        let by_grant = sqlx::query(&format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM identity_role_assignments WHERE scope_key = $1 AND role_definition_name = $2 AND principal_id = $3"
        ))
        .bind(&key)
        .bind(role.name)
        .bind(&request.principal_id)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(row) = by_grant {
            return Err(IdentityError::RoleAssignmentExists {
                existing_id: assignment_from_row(&row)?.id,
            });
        }
        let created_at = now_unix();
        sqlx::query(
            "INSERT INTO identity_role_assignments (name, scope, scope_key, role_definition_name, principal_id, principal_type, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&name)
        .bind(&scope)
        .bind(&key)
        .bind(role.name)
        .bind(&request.principal_id)
        .bind(&principal_type)
        .bind(created_at)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        self.inner.access_cache.invalidate();
        Ok(RoleAssignment {
            id: assignment_id(&scope, &name),
            role_definition_id: role_definition_id_at(&scope, role.name),
            name,
            scope,
            principal_id: request.principal_id.clone(),
            principal_type,
            created_at,
        })
    }

    /// The assignment with id `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`
    /// (compared case-insensitively).
    pub async fn role_assignment(
        &self,
        assignment_id: &str,
    ) -> Result<Option<RoleAssignment>, IdentityError> {
        let Some((scope_key_wanted, name)) = split_assignment_id(assignment_id) else {
            return Ok(None);
        };
        let row = sqlx::query(&format!(
            "SELECT {ASSIGNMENT_COLUMNS}, scope_key FROM identity_role_assignments WHERE name = $1"
        ))
        .bind(&name)
        .fetch_optional(self.database().pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored_key: String = row.try_get(6)?;
        if stored_key != scope_key_wanted {
            return Ok(None);
        }
        Ok(Some(assignment_from_row(&row)?))
    }

    /// Deletes the assignment with id `assignment_id`, returning it if it existed.
    pub async fn remove_role_assignment(
        &self,
        assignment_id: &str,
    ) -> Result<Option<RoleAssignment>, IdentityError> {
        let Some(existing) = self.role_assignment(assignment_id).await? else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM identity_role_assignments WHERE name = $1")
            .bind(&existing.name)
            .execute(self.database().pool())
            .await?;
        self.inner.access_cache.invalidate();
        Ok(Some(existing))
    }

    /// The role assignments relevant to `scope`, oldest first.
    pub async fn list_role_assignments(
        &self,
        scope: &str,
        filter: ScopeFilter,
    ) -> Result<Vec<RoleAssignment>, IdentityError> {
        let key = scope_key(scope).ok_or_else(|| {
            IdentityError::InvalidScope("a scope must be an absolute path".to_owned())
        })?;
        // Ancestors of the scope, matched exactly; everything else needs a prefix test.
        let mut ancestors = vec!["/".to_owned()];
        let mut prefix = String::new();
        for segment in key.split('/').filter(|segment| !segment.is_empty()) {
            prefix.push('/');
            prefix.push_str(segment);
            ancestors.push(prefix.clone());
        }
        let rows = sqlx::query(&format!("SELECT {ASSIGNMENT_COLUMNS}, scope_key FROM identity_role_assignments ORDER BY created_at, name"))
            .fetch_all(self.database().pool())
            .await?;
        let mut assignments = Vec::new();
        for row in rows {
            let stored_key: String = row.try_get(6)?;
            let relevant = ancestors.contains(&stored_key)
                || (filter == ScopeFilter::AtAboveAndBelow && covers(&key, &stored_key));
            if relevant {
                assignments.push(assignment_from_row(&row)?);
            }
        }
        Ok(assignments)
    }

    /// The role assignments of one principal, at any scope.
    pub async fn role_assignments_of(
        &self,
        principal_id: &str,
    ) -> Result<Vec<RoleAssignment>, IdentityError> {
        let rows = sqlx::query(&format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM identity_role_assignments WHERE principal_id = $1 ORDER BY created_at, name"
        ))
        .bind(principal_id)
        .fetch_all(self.database().pool())
        .await?;
        rows.iter().map(assignment_from_row).collect()
    }

    /// Whether `principal_id` may perform `action` at `scope`. Deny by default: only a role
    /// assignment at the scope or above it, whose role grants the action, allows it.
    pub async fn authorize(
        &self,
        principal_id: &str,
        action: &str,
        scope: &str,
        is_data_action: bool,
    ) -> Result<Decision, IdentityError> {
        let deny = || {
            Decision::Deny(DenyReason {
                principal_id: principal_id.to_owned(),
                action: action.to_owned(),
                is_data_action,
                scope: scope.to_owned(),
            })
        };
        let Some(target) = scope_key(scope) else {
            return Ok(deny());
        };
        let access = self.principal_access(principal_id).await?;
        for (assignment_scope, role_name) in &access.assignments {
            if !covers(assignment_scope, &target) {
                continue;
            }
            if role_definition(role_name).is_some_and(|role| role.permits(action, is_data_action)) {
                return Ok(Decision::Allow);
            }
        }
        Ok(deny())
    }
}

/// Splits a role assignment id into its scope key and lowercased GUID name.
fn split_assignment_id(assignment_id: &str) -> Option<(String, String)> {
    let marker = "/providers/microsoft.authorization/roleassignments/";
    let lower = assignment_id.trim_end_matches('/').to_ascii_lowercase();
    let position = lower.rfind(marker)?;
    let name = &lower[position + marker.len()..];
    let name = uuid::Uuid::parse_str(name).ok()?.hyphenated().to_string();
    let scope = &lower[..position];
    let scope = if scope.is_empty() { "/" } else { scope };
    Some((scope_key(scope)?, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_ids_round_trip() {
        let id = assignment_id(
            "/subscriptions/S/resourceGroups/RG",
            "0f6b5a4e-1111-4222-8333-944445555666",
        );
        assert_eq!(
            id,
            "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Authorization/roleAssignments/0f6b5a4e-1111-4222-8333-944445555666"
        );
        assert_eq!(
            split_assignment_id(&id),
            Some((
                "/subscriptions/s/resourcegroups/rg".to_owned(),
                "0f6b5a4e-1111-4222-8333-944445555666".to_owned()
            ))
        );
        let root = assignment_id("/", "0f6b5a4e-1111-4222-8333-944445555666");
        assert_eq!(
            split_assignment_id(&root).map(|(scope, _)| scope),
            Some("/".to_owned())
        );
        assert_eq!(
            split_assignment_id(
                "/subscriptions/s/providers/Microsoft.Authorization/roleAssignments/not-a-guid"
            ),
            None
        );
    }

    #[test]
    fn role_definition_ids_are_subscription_scoped_within_a_subscription() {
        assert_eq!(
            role_definition_id_at("/subscriptions/abc/resourceGroups/rg", "r"),
            "/subscriptions/abc/providers/Microsoft.Authorization/roleDefinitions/r"
        );
        assert_eq!(
            role_definition_id_at("/", "r"),
            "/providers/Microsoft.Authorization/roleDefinitions/r"
        );
    }
}
