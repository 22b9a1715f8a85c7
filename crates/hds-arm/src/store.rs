//! The generic resource store: every ARM resource (resource groups, deployments and whatever
//! providers keep) is one row of `arm_resources`, keyed by the lowercase id; long-running
//! operations are rows of `arm_operations`.
//!
//! JSON columns are TEXT (the `Any` driver has no JSON type) and times are RFC 3339 text.

use hds_db::{Database, DbError, Migration};
use serde_json::{Map, Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::id::ResourceId;

/// The component name of this crate's migrations in the shared database.
pub const COMPONENT: &str = "arm";

const SCHEMA: &str = "
CREATE TABLE arm_resources (
    id_key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    subscription_key TEXT NOT NULL,
    group_key TEXT NOT NULL,
    parent_key TEXT NOT NULL,
    type_key TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    name TEXT NOT NULL,
    location TEXT,
    tags TEXT,
    properties TEXT NOT NULL,
    identity TEXT,
    sku TEXT,
    kind TEXT,
    provisioning_state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    changed_at TEXT NOT NULL
);
CREATE INDEX arm_resources_parent ON arm_resources (parent_key, type_key);
CREATE INDEX arm_resources_group ON arm_resources (subscription_key, group_key);
CREATE TABLE arm_operations (
    id TEXT PRIMARY KEY,
    subscription_key TEXT NOT NULL,
    namespace TEXT NOT NULL,
    location TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    status TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT,
    error TEXT
);
";

/// The schema steps of the `arm` component. The DDL is portable between SQLite and
/// PostgreSQL, so both backends share it.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "generic resources and async operations",
        sqlite: SCHEMA,
        postgres: SCHEMA,
    },
    Migration {
        version: 2,
        description: "leases on async operations",
        sqlite: OPERATION_LEASES,
        postgres: OPERATION_LEASES,
    },
];

/// Which node runs an operation and until when its lease holds (renewed while it runs), and
/// whether its outcome sets the resource's provisioning state: what another node needs to
/// finish an operation whose node died.
const OPERATION_LEASES: &str = "
ALTER TABLE arm_operations ADD COLUMN lease_owner TEXT;
ALTER TABLE arm_operations ADD COLUMN lease_until_ms BIGINT;
ALTER TABLE arm_operations ADD COLUMN sets_state INTEGER NOT NULL DEFAULT 0;
CREATE INDEX arm_operations_status ON arm_operations (status);
";

/// The message of an operation whose node stopped before finishing it.
pub const ABANDONED_OPERATION: &str = "The node that ran this operation stopped before it finished; the resource may be partly changed. Send the request again (PUT and DELETE are idempotent).";

/// Why a store call failed. Messages never carry stored values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("resource store database error: {0}")]
    Database(#[from] DbError),
    /// A query failed.
    #[error("resource store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored row could not be read back (bad JSON, id or time).
    #[error("a stored resource row is corrupt ({0})")]
    Corrupt(&'static str),
}

impl StoreError {
    fn corrupt<E>(what: &'static str) -> impl FnOnce(E) -> StoreError {
        move |_| StoreError::Corrupt(what)
    }
}

/// One stored resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The id, as first written.
    pub id: ResourceId,
    /// `location`, if the type has one.
    pub location: Option<String>,
    /// `tags` (a JSON object), if any.
    pub tags: Option<Value>,
    /// `properties` without `provisioningState` (kept in [`Resource::provisioning_state`]).
    pub properties: Value,
    /// `identity`, if any.
    pub identity: Option<Value>,
    /// `sku`, if any.
    pub sku: Option<Value>,
    /// `kind`, if any.
    pub kind: Option<String>,
    /// `Succeeded`, `Failed`, `Canceled`, or a provider's transitional state (`Accepted`,
    /// `Creating`, `Updating`, `Deleting`, `Running`...).
    pub provisioning_state: String,
    /// When the resource was first written.
    pub created_at: OffsetDateTime,
    /// When it was last written.
    pub changed_at: OffsetDateTime,
}

impl Resource {
    /// A new resource from a PUT body's fields, in state `provisioning_state`.
    pub fn from_request(
        id: ResourceId,
        request: &PutRequest,
        provisioning_state: &str,
    ) -> Resource {
        let now = OffsetDateTime::now_utc();
        let mut properties = match &request.properties {
            Value::Object(properties) => Value::Object(properties.clone()),
            _ => Value::Object(Map::new()),
        };
        if let Some(object) = properties.as_object_mut() {
            object.remove("provisioningState");
        }
        Resource {
            id,
            location: request.location.clone(),
            tags: request.tags.clone(),
            properties,
            identity: request.identity.clone(),
            sku: request.sku.clone(),
            kind: request.kind.clone(),
            provisioning_state: provisioning_state.to_owned(),
            created_at: now,
            changed_at: now,
        }
    }

    /// The resource as ARM returns it: `{id, name, type, location, tags, identity, sku, kind,
    /// properties: {..., provisioningState}, systemData}`.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("id".into(), Value::String(self.id.as_str().to_owned()));
        object.insert("name".into(), Value::String(self.id.name().to_owned()));
        object.insert(
            "type".into(),
            Value::String(self.id.resource_type().unwrap_or_default()),
        );
        if let Some(location) = &self.location {
            object.insert("location".into(), Value::String(location.clone()));
        }
        if let Some(tags) = &self.tags {
            object.insert("tags".into(), tags.clone());
        }
        if let Some(identity) = &self.identity {
            object.insert("identity".into(), identity.clone());
        }
        if let Some(sku) = &self.sku {
            object.insert("sku".into(), sku.clone());
        }
        if let Some(kind) = &self.kind {
            object.insert("kind".into(), Value::String(kind.clone()));
        }
        let mut properties = match &self.properties {
            Value::Object(properties) => properties.clone(),
            _ => Map::new(),
        };
        properties.insert(
            "provisioningState".into(),
            Value::String(self.provisioning_state.clone()),
        );
        object.insert("properties".into(), Value::Object(properties));
        object.insert(
            "systemData".into(),
            json!({
                "createdAt": format_time(self.created_at),
                "lastModifiedAt": format_time(self.changed_at),
            }),
        );
        Value::Object(object)
    }
}

/// The fields of a PUT body ARM knows about; the rest of the body is ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PutRequest {
    /// `location`.
    pub location: Option<String>,
    /// `tags` (an object of strings).
    pub tags: Option<Value>,
    /// `identity`.
    pub identity: Option<Value>,
    /// `properties` (an object; `{}` when absent).
    pub properties: Value,
    /// `sku`.
    pub sku: Option<Value>,
    /// `kind`.
    pub kind: Option<String>,
}

impl PutRequest {
    /// Reads the ARM envelope of a PUT body, rejecting wrong shapes with
    /// `InvalidRequestContent`.
    pub fn parse(body: &Value) -> Result<PutRequest, crate::ArmError> {
        use crate::ArmError;
        let Some(object) = body.as_object() else {
            return Err(ArmError::invalid_request_content(
                "The request content must be a JSON object.",
            ));
        };
        let location = match object.get("location") {
            None | Some(Value::Null) => None,
            Some(Value::String(location)) => Some(location.clone()),
            Some(_) => {
                return Err(ArmError::invalid_request_content(
                    "'location' must be a string.",
                ));
            }
        };
        let tags = match object.get("tags") {
            None | Some(Value::Null) => None,
            Some(Value::Object(tags)) if tags.values().all(Value::is_string) => {
                Some(Value::Object(tags.clone()))
            }
            Some(_) => {
                return Err(ArmError::invalid_request_content(
                    "'tags' must be an object of strings.",
                ));
            }
        };
        let properties = match object.get("properties") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::Object(properties)) => Value::Object(properties.clone()),
            Some(_) => {
                return Err(ArmError::invalid_request_content(
                    "'properties' must be an object.",
                ));
            }
        };
        let identity = match object.get("identity") {
            None | Some(Value::Null) => None,
            Some(Value::Object(identity)) => Some(Value::Object(identity.clone())),
            Some(_) => {
                return Err(ArmError::invalid_request_content(
                    "'identity' must be an object.",
                ));
            }
        };
        let sku = object.get("sku").filter(|sku| !sku.is_null()).cloned();
        let kind = match object.get("kind") {
            None | Some(Value::Null) => None,
            Some(Value::String(kind)) => Some(kind.clone()),
            Some(_) => {
                return Err(ArmError::invalid_request_content(
                    "'kind' must be a string.",
                ));
            }
        };
        Ok(PutRequest {
            location,
            tags,
            identity,
            properties,
            sku,
            kind,
        })
    }
}

/// The state of a long-running operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationStatus {
    /// Still running.
    InProgress,
    /// Finished well.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped on request.
    Canceled,
}

impl OperationStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::InProgress => "InProgress",
            OperationStatus::Succeeded => "Succeeded",
            OperationStatus::Failed => "Failed",
            OperationStatus::Canceled => "Canceled",
        }
    }

    fn parse(text: &str) -> Option<OperationStatus> {
        match text {
            "InProgress" => Some(OperationStatus::InProgress),
            "Succeeded" => Some(OperationStatus::Succeeded),
            "Failed" => Some(OperationStatus::Failed),
            "Canceled" => Some(OperationStatus::Canceled),
            _ => None,
        }
    }
}

/// A long-running operation's record.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// The operation id (a UUID).
    pub id: String,
    /// The subscription it runs in.
    pub subscription: String,
    /// The provider namespace whose `operationStatuses` it is listed under.
    pub namespace: String,
    /// The location segment of its status URL.
    pub location: String,
    /// The resource it acts on.
    pub resource_id: String,
    /// Its state.
    pub status: OperationStatus,
    /// When it started.
    pub start_time: OffsetDateTime,
    /// When it ended.
    pub end_time: Option<OffsetDateTime>,
    /// Why it failed (`{code, message, details}`).
    pub error: Option<Value>,
}

impl Operation {
    /// The path of its status resource,
    /// `/subscriptions/{sub}/providers/{Namespace}/locations/{loc}/operationStatuses/{id}`.
    pub fn status_path(&self) -> String {
        format!(
            "/subscriptions/{}/providers/{}/locations/{}/operationStatuses/{}",
            self.subscription, self.namespace, self.location, self.id
        )
    }

    /// The status resource `{id, name, status, startTime, endTime, error}`.
    pub fn to_json(&self) -> Value {
        let mut object = json!({
            "id": self.status_path(),
            "name": self.id,
            "resourceId": self.resource_id,
            "status": self.status.as_str(),
            "startTime": format_time(self.start_time),
        });
        if let Some(end) = self.end_time {
            object["endTime"] = Value::String(format_time(end));
        }
        if let Some(error) = &self.error {
            object["error"] = error.clone();
        }
        object
    }
}

/// The resource store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResourceStore {
    database: Database,
}

const COLUMNS: &str = "id, location, tags, properties, identity, sku, kind, provisioning_state, created_at, changed_at";

impl ResourceStore {
    /// Opens the store on the shared database, applying the `arm` migrations.
    pub async fn open(database: Database) -> Result<ResourceStore, StoreError> {
        database.migrate(COMPONENT, MIGRATIONS).await?;
        Ok(ResourceStore { database })
    }

    /// The resource with this id (any case), if stored.
    pub async fn get(&self, id: &ResourceId) -> Result<Option<Resource>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM arm_resources WHERE id_key = $1"
        ))
        .bind(id.key())
        .fetch_optional(self.database.pool())
        .await?;
        row.map(|row| read_resource(&row)).transpose()
    }

    /// Inserts or replaces a resource (keeping its first creation time and first spelling of
    /// the id). Returns whether it was created.
    pub async fn upsert(&self, resource: &Resource) -> Result<bool, StoreError> {
        let mut transaction = self.database.begin_write().await?;
        let existed = sqlx::query("SELECT 1 FROM arm_resources WHERE id_key = $1")
            .bind(resource.id.key())
            .fetch_optional(&mut *transaction)
            .await?
            .is_some();
        let id = &resource.id;
        let json_text = |value: &Option<Value>| value.as_ref().map(Value::to_string);
        let now = format_time(resource.changed_at);
        if existed {
            sqlx::query(
                "UPDATE arm_resources SET location = $2, tags = $3, properties = $4, identity = $5, \
                 sku = $6, kind = $7, provisioning_state = $8, changed_at = $9 WHERE id_key = $1",
            )
            .bind(id.key())
            .bind(resource.location.clone())
            .bind(json_text(&resource.tags))
            .bind(resource.properties.to_string())
            .bind(json_text(&resource.identity))
            .bind(json_text(&resource.sku))
            .bind(resource.kind.clone())
            .bind(resource.provisioning_state.clone())
            .bind(now)
            .execute(&mut *transaction)
            .await?;
        } else {
            insert_row(&mut transaction, resource).await?;
        }
        transaction.commit().await?;
        Ok(!existed)
    }

    /// Stores `request` under `id` in state `Succeeded` and returns the stored resource: what
    /// a provider that only validates calls at the end of its PUT.
    pub async fn put_succeeded(
        &self,
        id: &ResourceId,
        request: &PutRequest,
    ) -> Result<Resource, StoreError> {
        let mut resource = Resource::from_request(id.clone(), request, "Succeeded");
        if let Some(existing) = self.get(id).await? {
            resource.created_at = existing.created_at;
            resource.id = existing.id;
        }
        self.upsert(&resource).await?;
        Ok(resource)
    }

    /// Sets a resource's provisioning state, if it exists.
    pub async fn set_provisioning_state(
        &self,
        id: &ResourceId,
        state: &str,
    ) -> Result<(), StoreError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "UPDATE arm_resources SET provisioning_state = $2, changed_at = $3 WHERE id_key = $1",
        )
        .bind(id.key())
        .bind(state)
        .bind(format_time(OffsetDateTime::now_utc()))
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Deletes a resource and everything beneath it (children, extension resources).
    /// Returns whether the resource itself existed.
    pub async fn delete(&self, id: &ResourceId) -> Result<bool, StoreError> {
        let prefix = format!("{}/", id.key());
        let mut transaction = self.database.begin_write().await?;
        let existed = sqlx::query("SELECT 1 FROM arm_resources WHERE id_key = $1")
            .bind(id.key())
            .fetch_optional(&mut *transaction)
            .await?
            .is_some();
        sqlx::query("DELETE FROM arm_resources WHERE id_key = $1 OR substr(id_key, 1, CAST($2 AS INTEGER)) = $3")
            .bind(id.key())
            .bind(i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX))
            .bind(prefix)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(existed)
    }

    /// The resources of `resource_type` directly under `parent`, in id order.
    pub async fn list_children(
        &self,
        parent: &ResourceId,
        resource_type: &str,
    ) -> Result<Vec<Resource>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM arm_resources WHERE parent_key = $1 AND type_key = $2 ORDER BY id_key"
        ))
        .bind(parent.key())
        .bind(resource_type.to_lowercase())
        .fetch_all(self.database.pool())
        .await?;
        read_listed(&rows)
    }

    /// Everything stored beneath `ancestor` (not `ancestor` itself), in id order: parents come
    /// before their children.
    pub async fn list_within(&self, ancestor: &ResourceId) -> Result<Vec<Resource>, StoreError> {
        let prefix = format!("{}/", ancestor.key());
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM arm_resources WHERE subscription_key = $1 AND substr(id_key, 1, CAST($2 AS INTEGER)) = $3 ORDER BY id_key"
        ))
        .bind(ancestor.subscription_id().to_lowercase())
        .bind(i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX))
        .bind(prefix)
        .fetch_all(self.database.pool())
        .await?;
        read_listed(&rows)
    }

    /// Moves a resource and everything beneath it from `old` to `new`, in one transaction.
    /// Returns the `(old, new)` ids of every row moved, outermost first.
    pub async fn move_tree(
        &self,
        old: &ResourceId,
        new: &ResourceId,
    ) -> Result<Vec<(ResourceId, ResourceId)>, StoreError> {
        let mut rows = match self.get(old).await? {
            Some(resource) => vec![resource],
            None => Vec::new(),
        };
        rows.extend(self.list_within(old).await?);
        let mut transaction = self.database.begin_write().await?;
        let mut moved = Vec::new();
        for mut resource in rows {
            let Some(new_id) = resource.id.rebase(old, new) else {
                continue;
            };
            sqlx::query("DELETE FROM arm_resources WHERE id_key = $1")
                .bind(resource.id.key())
                .execute(&mut *transaction)
                .await?;
            let old_id = std::mem::replace(&mut resource.id, new_id.clone());
            insert_row(&mut transaction, &resource).await?;
            moved.push((old_id, new_id));
        }
        transaction.commit().await?;
        Ok(moved)
    }

    /// Records a new operation in progress.
    pub async fn create_operation(&self, operation: &Operation) -> Result<(), StoreError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "INSERT INTO arm_operations (id, subscription_key, namespace, location, resource_id, status, start_time, end_time, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(operation.id.clone())
        .bind(operation.subscription.clone())
        .bind(operation.namespace.clone())
        .bind(operation.location.clone())
        .bind(operation.resource_id.clone())
        .bind(operation.status.as_str())
        .bind(format_time(operation.start_time))
        .bind(operation.end_time.map(format_time))
        .bind(operation.error.as_ref().map(Value::to_string))
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Holds `id` for `owner` until `until_ms` (creating or renewing its lease), with whether
    /// its outcome sets the resource's provisioning state. Only an operation in progress.
    pub async fn lease_operation(
        &self,
        id: &str,
        owner: &str,
        until_ms: i64,
        sets_state: bool,
    ) -> Result<(), StoreError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "UPDATE arm_operations SET lease_owner = $2, lease_until_ms = $3, sets_state = $4 \
             WHERE id = $1 AND status = 'InProgress'",
        )
        .bind(id)
        .bind(owner)
        .bind(until_ms)
        .bind(i64::from(sets_state))
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Finishes, as Failed with [`ABANDONED_OPERATION`], every operation in progress whose
    /// lease ended before `now_ms` (or that has none: it was started before leases existed,
    /// by a process that is gone), and sets the provisioning state of the resources whose
    /// state follows their operation to Failed. Returns how many it finished.
    pub async fn fail_abandoned_operations(&self, now_ms: i64) -> Result<usize, StoreError> {
        let abandoned = sqlx::query(
            "SELECT id, resource_id, sets_state FROM arm_operations \
             WHERE status = 'InProgress' AND (lease_until_ms IS NULL OR lease_until_ms < $1)",
        )
        .bind(now_ms)
        .fetch_all(self.database.pool())
        .await?;
        let error = serde_json::json!({
            "code": "OperationAbandoned",
            "message": ABANDONED_OPERATION,
        });
        let mut finished = 0;
        for row in abandoned {
            let id: String = row.try_get(0)?;
            let resource_id: String = row.try_get(1)?;
            let sets_state: i64 = row.try_get(2)?;
            let mut transaction = self.database.begin_write().await?;
            // Only if still abandoned: its node may have renewed the lease or finished since.
            let updated = sqlx::query(
                "UPDATE arm_operations SET status = 'Failed', end_time = $2, error = $3 \
                 WHERE id = $1 AND status = 'InProgress' AND (lease_until_ms IS NULL OR lease_until_ms < $4)",
            )
            .bind(&id)
            .bind(format_time(OffsetDateTime::now_utc()))
            .bind(error.to_string())
            .bind(now_ms)
            .execute(&mut *transaction)
            .await?;
            if updated.rows_affected() == 1
                && sets_state != 0
                && let Ok(resource) = ResourceId::parse(&resource_id)
            {
                sqlx::query(
                    "UPDATE arm_resources SET provisioning_state = 'Failed', changed_at = $2 \
                     WHERE id_key = $1 AND provisioning_state NOT IN ('Succeeded', 'Failed', 'Canceled')",
                )
                .bind(resource.key())
                .bind(format_time(OffsetDateTime::now_utc()))
                .execute(&mut *transaction)
                .await?;
            }
            transaction.commit().await?;
            finished += usize::from(updated.rows_affected() == 1);
        }
        Ok(finished)
    }

    /// Marks an operation finished.
    pub async fn finish_operation(
        &self,
        id: &str,
        status: OperationStatus,
        error: Option<&Value>,
    ) -> Result<(), StoreError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "UPDATE arm_operations SET status = $2, end_time = $3, error = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(format_time(OffsetDateTime::now_utc()))
        .bind(error.map(Value::to_string))
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// An operation by id (operation ids are lowercase UUIDs; the lookup ignores case).
    pub async fn get_operation(&self, id: &str) -> Result<Option<Operation>, StoreError> {
        let row = sqlx::query(
            "SELECT id, subscription_key, namespace, location, resource_id, status, start_time, end_time, error \
             FROM arm_operations WHERE id = $1",
        )
        .bind(id.to_lowercase())
        .fetch_optional(self.database.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status: String = row.try_get(5)?;
        let end_time: Option<String> = row.try_get(7)?;
        let error: Option<String> = row.try_get(8)?;
        Ok(Some(Operation {
            id: row.try_get(0)?,
            subscription: row.try_get(1)?,
            namespace: row.try_get(2)?,
            location: row.try_get(3)?,
            resource_id: row.try_get(4)?,
            status: OperationStatus::parse(&status)
                .ok_or(StoreError::Corrupt("operation status"))?,
            start_time: parse_time(&row.try_get::<String, _>(6)?)?,
            end_time: end_time.as_deref().map(parse_time).transpose()?,
            error: error
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(StoreError::corrupt("operation error"))?,
        }))
    }
}

async fn insert_row(
    transaction: &mut hds_db::WriteTransaction,
    resource: &Resource,
) -> Result<(), StoreError> {
    let id = &resource.id;
    let json_text = |value: &Option<Value>| value.as_ref().map(Value::to_string);
    sqlx::query(
        "INSERT INTO arm_resources (id_key, id, subscription_key, group_key, parent_key, type_key, \
         resource_type, name, location, tags, properties, identity, sku, kind, provisioning_state, \
         created_at, changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(id.key())
    .bind(id.as_str())
    .bind(id.subscription_id().to_lowercase())
    .bind(id.resource_group_name().unwrap_or_default().to_lowercase())
    .bind(id.parent().map(|parent| parent.key().to_owned()).unwrap_or_default())
    .bind(id.resource_type().unwrap_or_default().to_lowercase())
    .bind(id.resource_type().unwrap_or_default())
    .bind(id.name())
    .bind(resource.location.clone())
    .bind(json_text(&resource.tags))
    .bind(resource.properties.to_string())
    .bind(json_text(&resource.identity))
    .bind(json_text(&resource.sku))
    .bind(resource.kind.clone())
    .bind(resource.provisioning_state.clone())
    .bind(format_time(resource.created_at))
    .bind(format_time(OffsetDateTime::now_utc()))
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// The rows of a listing that read back; a corrupt row is logged (which column, never its
/// values) and left out, so one bad row cannot fail every listing, or startup, for everyone.
fn read_listed(rows: &[AnyRow]) -> Result<Vec<Resource>, StoreError> {
    let mut resources = Vec::with_capacity(rows.len());
    for row in rows {
        match read_resource(row) {
            Ok(resource) => resources.push(resource),
            Err(StoreError::Corrupt(column)) => {
                tracing::warn!(column, "a stored resource row is corrupt; it is left out");
            }
            Err(StoreError::Query(sqlx::Error::ColumnDecode { index, .. })) => {
                tracing::warn!(
                    column = %index,
                    "a stored resource row has a value of the wrong type; it is left out"
                );
            }
            Err(error) => return Err(error),
        }
    }
    Ok(resources)
}

fn read_resource(row: &AnyRow) -> Result<Resource, StoreError> {
    let json_column = |index: usize, what: &'static str| -> Result<Option<Value>, StoreError> {
        let text: Option<String> = row.try_get(index)?;
        text.as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(StoreError::corrupt(what))
    };
    let id: String = row.try_get(0)?;
    Ok(Resource {
        id: ResourceId::parse(&id).map_err(StoreError::corrupt("id"))?,
        location: row.try_get(1)?,
        tags: json_column(2, "tags")?,
        properties: json_column(3, "properties")?.unwrap_or(Value::Object(Map::new())),
        identity: json_column(4, "identity")?,
        sku: json_column(5, "sku")?,
        kind: row.try_get(6)?,
        provisioning_state: row.try_get(7)?,
        created_at: parse_time(&row.try_get::<String, _>(8)?)?,
        changed_at: parse_time(&row.try_get::<String, _>(9)?)?,
    })
}

/// RFC 3339 in UTC, as ARM writes times.
pub(crate) fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_default()
}

fn parse_time(text: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(StoreError::corrupt("time"))
}
