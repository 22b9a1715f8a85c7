//! `Microsoft.Authorization/roleAssignments` and `roleDefinitions`.
//!
//! Role assignments live in the identity service (what [`Identity::authorize`] reads), not
//! in the generic resource store: one copy, so a grant made here is in force at once and a
//! deleted principal's assignments go with it. Both types are extension resources, valid at a
//! subscription, a resource group or a resource.

use hds_arm::{
    ArmError, ArmFuture, FilterClause, ProviderResponse, RequestContext, ResourceId,
    ResourceProvider, invalid_filter, parse_filter,
};
use hds_identity::Identity;
use hds_identity::rbac::{RoleAssignment, RoleAssignmentRequest, ScopeFilter};
use hds_identity::roles::{RoleDefinition, role_definition};
use http::StatusCode;
use serde_json::{Value, json};

use crate::errors::{bad_request, from_identity, refused};
use crate::json::{field, format_unix, optional_string};

/// The role assignment type.
pub const ROLE_ASSIGNMENTS_TYPE: &str = "Microsoft.Authorization/roleAssignments";
/// The role definition type.
pub const ROLE_DEFINITIONS_TYPE: &str = "Microsoft.Authorization/roleDefinitions";

/// The principal types ARM accepts on an assignment.
const PRINCIPAL_TYPES: &[&str] = &[
    "User",
    "Group",
    "ServicePrincipal",
    "ForeignGroup",
    "Device",
];

/// The role assignment provider.
#[derive(Debug, Clone)]
pub struct RoleAssignmentProvider {
    identity: Identity,
}

impl RoleAssignmentProvider {
    /// Assignments kept in `identity`.
    pub fn new(identity: Identity) -> RoleAssignmentProvider {
        RoleAssignmentProvider { identity }
    }
}

/// The scope an extension resource applies to.
fn scope_of(id: &ResourceId) -> Result<ResourceId, ArmError> {
    id.scope()
        .ok_or_else(|| bad_request("InvalidScope", "The role assignment has no scope."))
}

/// The assignment as ARM returns it.
pub(crate) fn assignment_json(assignment: &RoleAssignment) -> Value {
    let created = format_unix(assignment.created_at);
    json!({
        "id": assignment.id,
        "name": assignment.name,
        "type": ROLE_ASSIGNMENTS_TYPE,
        "properties": {
            "roleDefinitionId": assignment.role_definition_id,
            "principalId": assignment.principal_id,
            "principalType": assignment.principal_type,
            "scope": assignment.scope,
            "condition": null,
            "conditionVersion": null,
            "createdOn": created,
            "updatedOn": created,
            "createdBy": null,
            "updatedBy": null,
            "delegatedManagedIdentityResourceId": null,
            "description": null,
        }
    })
}

fn not_found(id: &ResourceId) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "RoleAssignmentNotFound",
        format!("The role assignment '{}' is not found.", id.name()),
    )
}

impl ResourceProvider for RoleAssignmentProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![ROLE_ASSIGNMENTS_TYPE]
    }

    fn api_versions(&self) -> Vec<&'static str> {
        vec!["2022-04-01", "2021-04-01-preview"]
    }

    fn put(
        &self,
        _context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            if uuid::Uuid::parse_str(id.name()).is_err() {
                return Err(bad_request(
                    "InvalidRoleAssignmentId",
                    format!(
                        "The role assignment ID '{}' is not valid. The role assignment ID must be a GUID.",
                        id.name().chars().take(64).collect::<String>()
                    ),
                ));
            }
            let properties = field(&body, "properties").cloned().unwrap_or(json!({}));
            let role_definition_id = optional_string(
                &properties,
                "roleDefinitionId",
                "properties.roleDefinitionId",
            )?
            .ok_or_else(|| {
                bad_request(
                    "InvalidRequestContent",
                    "'properties.roleDefinitionId' is required.",
                )
            })?;
            let principal_id =
                optional_string(&properties, "principalId", "properties.principalId")?
                    .filter(|principal| !principal.is_empty())
                    .ok_or_else(|| {
                        bad_request(
                            "InvalidRequestContent",
                            "'properties.principalId' is required.",
                        )
                    })?;
            if uuid::Uuid::parse_str(&principal_id).is_err() {
                return Err(bad_request(
                    "InvalidPrincipalId",
                    "'properties.principalId' must be the object id (a GUID) of a user, group or service principal.",
                ));
            }
            let principal_type =
                match optional_string(&properties, "principalType", "properties.principalType")? {
                    None => None,
                    Some(given) => Some(
                        PRINCIPAL_TYPES
                            .iter()
                            .find(|known| known.eq_ignore_ascii_case(&given))
                            .map(|known| (*known).to_owned())
                            .ok_or_else(|| {
                                bad_request(
                                    "InvalidPrincipalType",
                                    format!(
                                        "'properties.principalType' must be one of {}.",
                                        PRINCIPAL_TYPES.join(", ")
                                    ),
                                )
                            })?,
                    ),
                };
            // A condition narrows what an assignment grants; ignoring one would grant more
            // than asked, so assignments with conditions are refused.
            if field(&properties, "condition").is_some() {
                return Err(bad_request(
                    "RoleAssignmentConditionNotSupported",
                    "Conditions on role assignments are not supported; leave 'properties.condition' out.",
                ));
            }
            let scope = scope_of(&id)?;
            let request = RoleAssignmentRequest {
                scope: scope.as_str().to_owned(),
                name: id.name().to_owned(),
                role_definition_id,
                principal_id,
                principal_type,
            };
            let assignment = self
                .identity
                .assign_role(&request)
                .await
                .map_err(from_identity)?;
            Ok(ProviderResponse::Completed(assignment_json(&assignment)))
        })
    }

    fn get(&self, _context: RequestContext, id: ResourceId) -> ArmFuture<'_, Value> {
        Box::pin(async move {
            match self
                .identity
                .role_assignment(id.as_str())
                .await
                .map_err(from_identity)?
            {
                Some(assignment) => Ok(assignment_json(&assignment)),
                None => Err(not_found(&id)),
            }
        })
    }

    /// The assignments at, above and below `parent` (ARM's unfiltered list), narrowed by
    /// the `$filter`s ARM takes here: `atScope()` (only those at or above `parent`),
    /// `principalId eq '{id}'` and `assignedTo('{id}')` (the principal's own; there are no
    /// groups to expand).
    fn list(
        &self,
        context: RequestContext,
        parent: ResourceId,
        _resource_type: String,
    ) -> ArmFuture<'_, Vec<Value>> {
        Box::pin(async move {
            let filter = AssignmentFilter::parse(context.filter.as_deref())?;
            let scope_filter = if filter.at_scope {
                ScopeFilter::AtAndAbove
            } else {
                ScopeFilter::AtAboveAndBelow
            };
            let assignments = self
                .identity
                .list_role_assignments(parent.as_str(), scope_filter)
                .await
                .map_err(from_identity)?;
            Ok(assignments
                .iter()
                .filter(|assignment| {
                    filter
                        .principal_id
                        .as_deref()
                        .is_none_or(|wanted| assignment.principal_id.eq_ignore_ascii_case(wanted))
                })
                .map(assignment_json)
                .collect())
        })
    }

    /// Patching an assignment is not an ARM operation.
    fn patch(
        &self,
        _context: RequestContext,
        _id: ResourceId,
        _body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        refused("Role assignments cannot be patched; delete and create them.")
    }

    /// Returns the deleted assignment (200), or 204 when there was none.
    fn delete(&self, _context: RequestContext, id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            match self
                .identity
                .remove_role_assignment(id.as_str())
                .await
                .map_err(from_identity)?
            {
                Some(assignment) => Ok(ProviderResponse::Completed(assignment_json(&assignment))),
                None => Ok(ProviderResponse::NoContent),
            }
        })
    }
}

/// The `$filter` of a role assignment list.
#[derive(Debug, Default)]
struct AssignmentFilter {
    at_scope: bool,
    principal_id: Option<String>,
}

impl AssignmentFilter {
    fn parse(text: Option<&str>) -> Result<AssignmentFilter, ArmError> {
        let mut filter = AssignmentFilter::default();
        let Some(text) = text else {
            return Ok(filter);
        };
        for clause in parse_filter(text)? {
            match &clause {
                FilterClause::Call { name, argument } if name.eq_ignore_ascii_case("atScope") => {
                    if argument.is_some() {
                        return Err(invalid_filter("atScope() takes no argument."));
                    }
                    filter.at_scope = true;
                }
                FilterClause::Call {
                    name,
                    argument: Some(principal),
                } if name.eq_ignore_ascii_case("assignedTo") => {
                    filter.principal_id = Some(principal.clone());
                }
                _ => match clause.equals("principalId") {
                    Some(principal) => filter.principal_id = Some(principal.to_owned()),
                    None => {
                        return Err(invalid_filter(format!(
                            "The $filter clause '{}' is not supported on role assignments; use atScope(), principalId eq or assignedTo().",
                            clause.describe()
                        )));
                    }
                },
            }
        }
        Ok(filter)
    }
}

/// The role definition provider: the built-in roles, with Azure's GUIDs, at any scope.
#[derive(Debug, Clone, Default)]
pub struct RoleDefinitionProvider;

/// A definition as ARM returns it, with its id under `scope`'s subscription (as Azure shows
/// built-in roles read through a subscription).
pub(crate) fn definition_json(definition: &RoleDefinition, scope: &ResourceId) -> Value {
    let id = format!(
        "/subscriptions/{}/providers/{ROLE_DEFINITIONS_TYPE}/{}",
        scope.subscription_id(),
        definition.name
    );
    json!({
        "id": id,
        "name": definition.name,
        "type": ROLE_DEFINITIONS_TYPE,
        "properties": {
            "roleName": definition.role_name,
            "type": "BuiltInRole",
            "description": definition.description,
            "assignableScopes": ["/"],
            "permissions": [{
                "actions": definition.actions,
                "notActions": definition.not_actions,
                "dataActions": definition.data_actions,
                "notDataActions": definition.not_data_actions,
            }],
            "createdOn": null,
            "updatedOn": null,
            "createdBy": null,
            "updatedBy": null,
        }
    })
}

impl ResourceProvider for RoleDefinitionProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![ROLE_DEFINITIONS_TYPE]
    }

    fn api_versions(&self) -> Vec<&'static str> {
        vec!["2022-04-01"]
    }

    fn put(
        &self,
        _context: RequestContext,
        _id: ResourceId,
        _body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async {
            Err(bad_request(
                "CustomRoleDefinitionsNotSupported",
                "Only the built-in role definitions exist; custom roles cannot be created.",
            ))
        })
    }

    fn get(&self, _context: RequestContext, id: ResourceId) -> ArmFuture<'_, Value> {
        Box::pin(async move {
            let scope = id.scope().unwrap_or_else(|| id.clone());
            match role_definition(id.name()) {
                Some(definition) => Ok(definition_json(definition, &scope)),
                None => Err(ArmError::new(
                    StatusCode::NOT_FOUND,
                    "RoleDefinitionDoesNotExist",
                    format!(
                        "The specified role definition with ID '{}' does not exist.",
                        id.name().chars().take(64).collect::<String>()
                    ),
                )),
            }
        })
    }

    /// Every built-in role, or with `$filter=roleName eq '{name}'` the one so named (what
    /// `az role assignment create --role NAME` resolves a name with), or with
    /// `type eq 'BuiltInRole'|'CustomRole'` those of that type.
    fn list(
        &self,
        context: RequestContext,
        parent: ResourceId,
        _resource_type: String,
    ) -> ArmFuture<'_, Vec<Value>> {
        Box::pin(async move {
            let mut role_name = None;
            let mut role_type = None;
            if let Some(text) = context.filter.as_deref() {
                for clause in parse_filter(text)? {
                    if let Some(value) = clause.equals("roleName") {
                        role_name = Some(value.to_owned());
                    } else if let Some(value) = clause.equals("type") {
                        role_type = Some(value.to_owned());
                    } else {
                        return Err(invalid_filter(format!(
                            "The $filter clause '{}' is not supported on role definitions; use roleName eq or type eq.",
                            clause.describe()
                        )));
                    }
                }
            }
            if role_type
                .as_deref()
                .is_some_and(|wanted| !wanted.eq_ignore_ascii_case("BuiltInRole"))
            {
                return Ok(Vec::new());
            }
            Ok(hds_identity::roles::role_definitions()
                .iter()
                .filter(|definition| {
                    role_name
                        .as_deref()
                        .is_none_or(|wanted| definition.role_name.eq_ignore_ascii_case(wanted))
                })
                .map(|definition| definition_json(definition, &parent))
                .collect())
        })
    }

    fn patch(
        &self,
        _context: RequestContext,
        _id: ResourceId,
        _body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        refused("Built-in role definitions cannot be changed.")
    }

    fn delete(&self, _context: RequestContext, _id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        refused("Built-in role definitions cannot be deleted.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_filters_are_read_or_refused() {
        let filter = AssignmentFilter::parse(Some("atScope() and assignedTo('abc')"))
            .expect("az's filter for --scope with --assignee");
        assert!(filter.at_scope);
        assert_eq!(filter.principal_id.as_deref(), Some("abc"));
        let filter = AssignmentFilter::parse(Some("principalId eq 'def'")).expect("parses");
        assert!(!filter.at_scope);
        assert_eq!(filter.principal_id.as_deref(), Some("def"));
        let filter = AssignmentFilter::parse(None).expect("no filter");
        assert!(!filter.at_scope && filter.principal_id.is_none());
        for hostile in [
            "atScope('x')",
            "roleName eq 'Owner'",
            "assignedTo()",
            "principalId ne 'x'",
            "atScope() or atScope()",
        ] {
            let error = AssignmentFilter::parse(Some(hostile)).expect_err(hostile);
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{hostile}");
        }
    }
}
