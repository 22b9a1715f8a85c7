//! The `identity` component's migrations. Released migrations are never edited: add one.
//!
//! Only `TEXT` and `BIGINT` columns, so one SQL text serves SQLite and PostgreSQL alike; binary
//! values (sealed keys, secret hashes) are stored base64- or hex-encoded. Ids that ARM compares
//! case-insensitively are stored twice: as given (to echo back) and lowercased (`*_key`, to
//! index and compare).

use hds_db::Migration;

/// The component name under which the migrations are recorded.
pub(crate) const COMPONENT: &str = "identity";

const INITIAL: &str = "
CREATE TABLE identity_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE identity_tenants (
    tenant_id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);
CREATE TABLE identity_subscriptions (
    subscription_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES identity_tenants (tenant_id),
    display_name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE identity_resource_groups (
    resource_group_key TEXT PRIMARY KEY,
    resource_group_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL REFERENCES identity_subscriptions (subscription_id),
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE identity_principals (
    principal_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES identity_tenants (tenant_id),
    kind TEXT NOT NULL,
    client_id TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    secret_hash TEXT,
    resource_key TEXT,
    resource_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX identity_principals_by_resource ON identity_principals (kind, resource_key);
CREATE TABLE identity_role_assignments (
    name TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    scope_key TEXT NOT NULL,
    role_definition_name TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    principal_type TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX identity_role_assignments_by_principal ON identity_role_assignments (principal_id);
CREATE INDEX identity_role_assignments_by_scope ON identity_role_assignments (scope_key);
CREATE UNIQUE INDEX identity_role_assignments_grant ON identity_role_assignments (scope_key, role_definition_name, principal_id);
CREATE TABLE identity_signing_keys (
    kid TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL,
    sealed_private_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
";

/// App registrations and their password credentials. An application's service principal is a
/// row of `identity_principals` (kind `ServicePrincipal`) whose `client_id` is the application's
/// `app_id`; a credential belongs to one object (`owner_id`: the application's object id or its
/// service principal's) and signs in as `app_id` between `start_at` and `end_at`.
const APPLICATIONS: &str = "
CREATE TABLE identity_applications (
    object_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES identity_tenants (tenant_id),
    display_name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE identity_password_credentials (
    key_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    display_name TEXT,
    hint TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    start_at BIGINT NOT NULL,
    end_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX identity_password_credentials_by_app ON identity_password_credentials (app_id);
CREATE INDEX identity_password_credentials_by_owner ON identity_password_credentials (owner_id);
";

/// Every migration of the component, in order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "tenants, subscriptions, resource groups, principals, role assignments, signing keys",
        sqlite: INITIAL,
        postgres: INITIAL,
    },
    Migration {
        version: 2,
        description: "app registrations and password credentials",
        sqlite: APPLICATIONS,
        postgres: APPLICATIONS,
    },
];
