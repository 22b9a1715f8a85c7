//! Template deployments (`Microsoft.Resources/deployments` at resource-group scope).
//!
//! A deployment is validated synchronously (parameters, expressions that need no deployed
//! resource, names, dependencies: a bad template answers 400 `InvalidTemplate`), then runs as
//! an async operation: resources are PUT one at a time, in dependency order (stable by
//! template position), each through its registered provider with the caller's own
//! authorization, and each recorded as a deployment operation. The first failure stops the
//! deployment (`Failed`, error `DeploymentFailed` with the resource's error as detail);
//! later resources are not deployed.
//!
//! Supported: `parameters` (types in any case, `defaultValue`, `allowedValues`), `variables`,
//! `resources` with `condition`, `dependsOn` (ids or names), `scope` (an extension resource's
//! scope id), child names `parent/child`, and `outputs`; `mode: Incremental`. Not supported
//! (answered with `InvalidTemplate`): `copy` loops, nested or linked templates, `functions`,
//! `templateLink`/`parametersLink`. `Microsoft.Authorization/roleAssignments` without `scope`
//! is deployed at the resource group, like every other top-level resource.

pub(crate) mod expr;
mod functions;
pub(crate) mod limits;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use http::StatusCode;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::access::Caller;
use crate::error::ArmError;
use crate::id::ResourceId;
use crate::service::{Arm, DEPLOYMENT_OPERATIONS_TYPE, DEPLOYMENTS_TYPE, Outcome};
use crate::store::{Resource, format_time};
use expr::{DeploymentScope, Evaluator, References, lookup};
use limits::{Budget, MAX_OUTPUTS, MAX_PARAMETERS, MAX_RESOURCES, MAX_VARIABLES, exceeded};

/// A validated deployment, ready to run.
#[derive(Debug, Clone)]
struct Plan {
    scope: DeploymentScope,
    parameters: Map<String, Value>,
    /// The parameters as the deployment reports them (`{name: {type, value}}`, secure values
    /// left out).
    reported_parameters: Map<String, Value>,
    variables: Map<String, Value>,
    resources: Vec<PlannedResource>,
    /// Indexes into `resources`, in the order they deploy.
    order: Vec<usize>,
    resource_names: HashMap<String, ResourceId>,
    outputs: Map<String, Value>,
    mode: String,
    /// What evaluating this deployment may still cost, validation included.
    budget: Arc<Budget>,
}

#[derive(Debug, Clone)]
struct PlannedResource {
    raw: Value,
    resource_type: String,
    api_version: String,
    id: ResourceId,
    depends_on: BTreeSet<usize>,
}

fn invalid(message: impl Into<String>) -> ArmError {
    ArmError::invalid_template(message)
}

/// Plans a deployment on a blocking thread: validation evaluates expressions, which is CPU
/// work bounded by the template's [`Budget`], and must not hold an async worker meanwhile.
async fn prepare_blocking(scope: DeploymentScope, body: Value) -> Result<Plan, ArmError> {
    tokio::task::spawn_blocking(move || prepare(scope, &body))
        .await
        .map_err(|error| ArmError::internal(&error))?
}

/// Checks a deployment request and plans it.
fn prepare(scope: DeploymentScope, body: &Value) -> Result<Plan, ArmError> {
    let properties = body
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ArmError::invalid_request_content("The deployment must have 'properties'.")
        })?;
    if properties.contains_key("templateLink") || properties.contains_key("parametersLink") {
        return Err(invalid(
            "Linked templates and parameter files ('templateLink', 'parametersLink') are not supported; send 'template' and 'parameters' inline.",
        ));
    }
    let template = properties
        .get("template")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("The deployment has no 'template' object."))?;
    let mode = properties
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("Incremental");
    if !mode.eq_ignore_ascii_case("Incremental") {
        return Err(ArmError::invalid_request_content(format!(
            "The deployment mode '{mode}' is not supported; only 'Incremental' is."
        )));
    }
    let supplied = match properties.get("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(supplied)) => supplied.clone(),
        Some(_) => {
            return Err(ArmError::invalid_request_content(
                "'parameters' must be an object.",
            ));
        }
    };
    for unsupported in ["functions", "copy"] {
        if template.contains_key(unsupported) {
            return Err(invalid(format!(
                "The template section '{unsupported}' is not supported."
            )));
        }
    }
    let declared = match template.get("parameters") {
        None => Map::new(),
        Some(Value::Object(declared)) => declared.clone(),
        Some(_) => return Err(invalid("The template 'parameters' must be an object.")),
    };
    let variables = match template.get("variables") {
        None => Map::new(),
        Some(Value::Object(variables)) => variables.clone(),
        Some(_) => return Err(invalid("The template 'variables' must be an object.")),
    };
    let outputs = match template.get("outputs") {
        None => Map::new(),
        Some(Value::Object(outputs)) => outputs.clone(),
        Some(_) => return Err(invalid("The template 'outputs' must be an object.")),
    };
    let raw_resources = match template.get("resources") {
        None => Vec::new(),
        Some(Value::Array(resources)) => resources.clone(),
        Some(_) => return Err(invalid("The template 'resources' must be an array.")),
    };
    for (section, count, maximum) in [
        ("parameters", declared.len(), MAX_PARAMETERS),
        ("variables", variables.len(), MAX_VARIABLES),
        ("outputs", outputs.len(), MAX_OUTPUTS),
        ("resources", raw_resources.len(), MAX_RESOURCES),
    ] {
        if count > maximum {
            return Err(exceeded(&format!("the number of {section}"), maximum));
        }
    }
    for section in template.values() {
        expr::check_expressions(section)?;
    }
    let budget = Arc::new(Budget::default());
    let (parameters, reported_parameters) =
        resolve_parameters(&scope, &declared, &supplied, &budget)?;

    let no_names = HashMap::new();
    let no_resources = HashMap::new();
    let plain = Evaluator::new(
        &scope,
        &parameters,
        &variables,
        &no_names,
        References::Resolved(&no_resources),
        &budget,
    );
    let mut resources = Vec::new();
    let mut declared_names = Vec::new();
    for (index, raw) in raw_resources.iter().enumerate() {
        let Some(object) = raw.as_object() else {
            return Err(invalid(format!(
                "The template resource at position {index} is not an object."
            )));
        };
        if object.contains_key("copy") {
            return Err(invalid("Resource 'copy' loops are not supported."));
        }
        if let Some(condition) = object.get("condition") {
            match plain.evaluate_json(condition)? {
                Value::Bool(false) => continue,
                Value::Bool(true) => {}
                _ => {
                    return Err(invalid(
                        "A resource 'condition' must evaluate to a boolean.",
                    ));
                }
            }
        }
        let text_field = |name: &str| -> Result<String, ArmError> {
            match object
                .get(name)
                .map(|value| plain.evaluate_json(value))
                .transpose()?
            {
                Some(Value::String(text)) if !text.is_empty() => Ok(text),
                _ => Err(invalid(format!(
                    "The template resource at position {index} must have a string '{name}'."
                ))),
            }
        };
        let resource_type = text_field("type")?;
        let api_version = text_field("apiVersion")?;
        let name = text_field("name")?;
        if resource_type.eq_ignore_ascii_case(DEPLOYMENTS_TYPE) {
            return Err(invalid("Nested deployments are not supported."));
        }
        let names: Vec<&str> = name.split('/').collect();
        let container = match object.get("scope") {
            None => scope.resource_group_id(),
            Some(value) => match plain.evaluate_json(value)? {
                Value::String(text) => ResourceId::parse(&text).map_err(|_| {
                    invalid(format!(
                        "The scope '{text}' of resource '{name}' is not a resource id."
                    ))
                })?,
                _ => {
                    return Err(invalid(format!(
                        "The scope of resource '{name}' must be a string."
                    )));
                }
            },
        };
        let id = container.with_resource(&resource_type, &names).ok_or_else(|| {
            invalid(format!(
                "The template resource '{name}' for type '{resource_type}' has an incorrect segment length. A nested resource type must have identical number of segments as its resource name."
            ))
        })?;
        declared_names.push((
            name.to_lowercase(),
            format!("{}/{}", resource_type.trim_end_matches('/'), name).to_lowercase(),
        ));
        resources.push(PlannedResource {
            raw: raw.clone(),
            resource_type,
            api_version,
            id,
            depends_on: BTreeSet::new(),
        });
    }
    let mut resource_names = HashMap::new();
    for ((name, _), resource) in declared_names.iter().zip(&resources) {
        resource_names.insert(name.clone(), resource.id.clone());
    }

    // Dependencies: explicit `dependsOn`, and implicit ones through `reference()`.
    for index in 0..resources.len() {
        let mut depends_on = BTreeSet::new();
        let object = resources[index]
            .raw
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Some(entries) = object.get("dependsOn") {
            let Value::Array(entries) = plain.evaluate_json(entries)? else {
                return Err(invalid("'dependsOn' must be an array."));
            };
            for entry in entries {
                let Some(text) = entry.as_str() else {
                    return Err(invalid("'dependsOn' entries must be strings."));
                };
                let lower = text.to_lowercase();
                let found = resources.iter().enumerate().position(|(other, resource)| {
                    let (name, typed_name) = &declared_names[other];
                    resource.id.key() == lower || *name == lower || *typed_name == lower
                });
                match found {
                    Some(other) => {
                        depends_on.insert(other);
                    }
                    None => {
                        return Err(invalid(format!(
                            "The resource '{text}' is not defined in the template."
                        )));
                    }
                }
            }
        }
        let collector = Evaluator::new(
            &scope,
            &parameters,
            &variables,
            &resource_names,
            References::Collect(RefCell::new(Vec::new())),
            &budget,
        );
        collector.evaluate_json(&resources[index].raw)?;
        for target in collector.collected() {
            if let Some(other) = resources.iter().position(|resource| resource.id == target) {
                depends_on.insert(other);
            }
        }
        depends_on.remove(&index);
        resources[index].depends_on = depends_on;
    }
    let order = dependency_order(&resources)?;
    // The outputs are evaluated for real only after every resource deployed; evaluating them
    // here too (with `reference()` yielding null) refuses a template whose outputs break a
    // limit before anything deploys, and checks what they refer to.
    Evaluator::new(
        &scope,
        &parameters,
        &variables,
        &resource_names,
        References::Collect(RefCell::new(Vec::new())),
        &budget,
    )
    .evaluate_json(&Value::Object(outputs.clone()))?;
    Ok(Plan {
        scope,
        parameters,
        reported_parameters,
        variables,
        resources,
        order,
        resource_names,
        outputs,
        mode: "Incremental".to_owned(),
        budget,
    })
}

/// Kahn's algorithm, taking the lowest template position among the ready resources.
fn dependency_order(resources: &[PlannedResource]) -> Result<Vec<usize>, ArmError> {
    let mut done = vec![false; resources.len()];
    let mut order = Vec::with_capacity(resources.len());
    while order.len() < resources.len() {
        let next = (0..resources.len()).find(|index| {
            !done[*index]
                && resources[*index]
                    .depends_on
                    .iter()
                    .all(|dependency| done[*dependency])
        });
        let Some(next) = next else {
            let stuck: Vec<String> = (0..resources.len())
                .filter(|index| !done[*index])
                .map(|index| resources[index].id.qualified_name())
                .collect();
            return Err(invalid(format!(
                "Deployment template validation failed: 'Circular dependency detected on resource(s): '{}''.",
                stuck.join(", ")
            )));
        };
        done[next] = true;
        order.push(next);
    }
    Ok(order)
}

type Parameters = (Map<String, Value>, Map<String, Value>);

fn resolve_parameters(
    scope: &DeploymentScope,
    declared: &Map<String, Value>,
    supplied: &Map<String, Value>,
    budget: &Budget,
) -> Result<Parameters, ArmError> {
    let unknown: Vec<&str> = supplied
        .keys()
        .filter(|name| lookup(declared, name).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(invalid(format!(
            "Deployment template validation failed: 'The template parameters '{}' in the parameters file are not valid; they are not present in the original template and can therefore not be provided at deployment time.'",
            unknown.join(", ")
        )));
    }
    let mut values = Map::new();
    let mut reported = Map::new();
    let no_variables = Map::new();
    let no_names = HashMap::new();
    let no_resources = HashMap::new();
    for (name, definition) in declared {
        let parameter_type = definition
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("The template parameter '{name}' has no 'type'.")))?
            .to_lowercase();
        let value = match lookup(supplied, name) {
            Some(entry) => match entry.get("value") {
                Some(value) => value.clone(),
                None if entry.get("reference").is_some() => {
                    return Err(invalid(format!(
                        "The parameter '{name}' is a Key Vault reference, which is not supported."
                    )));
                }
                None => {
                    return Err(invalid(format!(
                        "The parameter '{name}' must be given as {{\"value\": ...}}."
                    )));
                }
            },
            None => match definition.get("defaultValue") {
                Some(default) => {
                    let evaluator = Evaluator::new(
                        scope,
                        &values,
                        &no_variables,
                        &no_names,
                        References::Resolved(&no_resources),
                        budget,
                    );
                    evaluator.evaluate_json(default)?
                }
                None => {
                    return Err(invalid(format!(
                        "Deployment template validation failed: 'The value for the template parameter '{name}' is not provided. Please see https://aka.ms/arm-create-parameter-file for usage details.'"
                    )));
                }
            },
        };
        let type_ok = match parameter_type.as_str() {
            "string" | "securestring" => value.is_string(),
            "int" => value.is_i64() || value.is_u64(),
            "bool" => value.is_boolean(),
            "object" | "secureobject" => value.is_object(),
            "array" => value.is_array(),
            _ => {
                return Err(invalid(format!(
                    "The template parameter '{name}' has an unknown type."
                )));
            }
        };
        if !type_ok {
            return Err(invalid(format!(
                "Deployment template validation failed: 'Template parameter '{name}' was provided an invalid value. Expected a value of type '{parameter_type}'.'"
            )));
        }
        if let Some(Value::Array(allowed)) = definition.get("allowedValues")
            && !allowed.contains(&value)
        {
            return Err(invalid(format!(
                "Deployment template validation failed: 'The provided value for the template parameter '{name}' is not valid. The value must be one of the allowed values.'"
            )));
        }
        let secure = parameter_type.starts_with("secure");
        let display_type = definition.get("type").cloned().unwrap_or(Value::Null);
        reported.insert(
            name.clone(),
            if secure {
                json!({ "type": display_type })
            } else {
                json!({ "type": display_type, "value": value })
            },
        );
        values.insert(name.clone(), value);
    }
    Ok((values, reported))
}

/// The deployment scope of a resource group, from the store.
async fn deployment_scope(
    arm: &Arm,
    group: &ResourceId,
    deployment_name: &str,
) -> Result<DeploymentScope, ArmError> {
    let subscription = arm.subscription(group.subscription_id())?.clone();
    let Some(group_resource) = arm.store().get(group).await? else {
        return Err(ArmError::resource_group_not_found(group.name()));
    };
    Ok(DeploymentScope {
        subscription_id: subscription.subscription_id,
        subscription_display_name: subscription.display_name,
        tenant_id: arm.config().tenant_id.clone(),
        resource_group: group_resource.id.name().to_owned(),
        resource_group_location: group_resource.location.unwrap_or_default(),
        deployment_name: deployment_name.to_owned(),
    })
}

fn deployment_group(id: &ResourceId) -> Result<ResourceId, ArmError> {
    match (id.parent(), id.resource_type()) {
        (Some(parent), Some(resource_type))
            if parent.is_resource_group()
                && resource_type.eq_ignore_ascii_case(DEPLOYMENTS_TYPE) =>
        {
            Ok(parent)
        }
        _ => Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidDeploymentScope",
            "Deployments are supported at resource-group scope only.",
        )),
    }
}

/// `PUT .../providers/Microsoft.Resources/deployments/{name}`.
pub(crate) async fn put_deployment(
    arm: &Arm,
    caller: &Caller,
    _api_version: &str,
    id: &ResourceId,
    body: Value,
) -> Result<Outcome, ArmError> {
    arm.subscription(id.subscription_id())?;
    arm.authorize(caller, "Microsoft.Resources/deployments/write", id)
        .await?;
    crate::names::check_resource_id(id)?;
    let group = deployment_group(id)?;
    let scope = deployment_scope(arm, &group, id.name()).await?;
    let plan = prepare_blocking(scope, body).await?;
    let record = start_record(arm, id, &plan).await?;
    let task_arm = arm.clone();
    let task_caller = caller.clone();
    let task_id = id.clone();
    let completion = Box::pin(async move {
        run(&task_arm, &task_caller, &task_id, plan)
            .await
            .map(|_| ())
    });
    let operation = arm.start_operation(id, None, completion, false).await?;
    Ok(Outcome::Accepted {
        status: StatusCode::CREATED,
        body: Some(record.to_json()),
        operation: Box::new(operation),
    })
}

impl Arm {
    /// Deploys `template` with `parameters` (`{"name": {"value": ...}}`) into
    /// `resource_group` as deployment `name`, as the caller, and waits for the end. Returns
    /// the deployment resource (`properties.outputs` holds the outputs), or the
    /// `InvalidTemplate` / `DeploymentFailed` error.
    pub async fn deploy(
        &self,
        caller: &Caller,
        resource_group: &ResourceId,
        name: &str,
        template: Value,
        parameters: Value,
    ) -> Result<Value, ArmError> {
        let id = resource_group
            .with_resource(DEPLOYMENTS_TYPE, &[name])
            .ok_or_else(|| {
                ArmError::invalid_request_content("The deployment name is not valid.")
            })?;
        self.subscription(id.subscription_id())?;
        self.authorize(caller, "Microsoft.Resources/deployments/write", &id)
            .await?;
        crate::names::check_resource_id(&id)?;
        let scope = deployment_scope(self, resource_group, name).await?;
        let body = json!({ "properties": { "mode": "Incremental", "template": template, "parameters": parameters } });
        let plan = prepare_blocking(scope, body).await?;
        start_record(self, &id, &plan).await?;
        run(self, caller, &id, plan).await?;
        get_deployment_resource(self, &id).await
    }
}

/// Writes the deployment record in state `Accepted`, dropping the operations of an earlier
/// run under the same name.
async fn start_record(arm: &Arm, id: &ResourceId, plan: &Plan) -> Result<Resource, ArmError> {
    for operation in arm
        .store()
        .list_children(id, DEPLOYMENT_OPERATIONS_TYPE)
        .await?
    {
        arm.store().delete(&operation.id).await?;
    }
    let now = OffsetDateTime::now_utc();
    let created_at = arm
        .store()
        .get(id)
        .await?
        .map_or(now, |existing| existing.created_at);
    let record = Resource {
        id: id.clone(),
        location: None,
        tags: None,
        properties: json!({
            "mode": plan.mode,
            "parameters": plan.reported_parameters,
            "timestamp": format_time(now),
            "correlationId": uuid::Uuid::new_v4().to_string(),
            "dependencies": dependencies_json(plan),
            "outputs": {},
            "outputResources": [],
        }),
        identity: None,
        sku: None,
        kind: None,
        provisioning_state: "Accepted".to_owned(),
        created_at,
        changed_at: now,
    };
    arm.store().upsert(&record).await?;
    Ok(record)
}

fn dependencies_json(plan: &Plan) -> Value {
    let entries: Vec<Value> = plan
        .resources
        .iter()
        .filter(|resource| !resource.depends_on.is_empty())
        .map(|resource| {
            json!({
                "id": resource.id.as_str(),
                "resourceType": resource.resource_type,
                "resourceName": resource.id.qualified_name(),
                "dependsOn": resource.depends_on.iter().map(|index| {
                    let other = &plan.resources[*index];
                    json!({ "id": other.id.as_str(), "resourceType": other.resource_type, "resourceName": other.id.qualified_name() })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    Value::Array(entries)
}

/// Runs a planned deployment to its end, recording everything on the deployment record.
async fn run(arm: &Arm, caller: &Caller, id: &ResourceId, plan: Plan) -> Result<Value, ArmError> {
    let plan = Arc::new(plan);
    arm.store().set_provisioning_state(id, "Running").await?;
    let started = OffsetDateTime::now_utc();
    let result = run_resources(arm, caller, id, &plan).await;
    let Some(mut record) = arm.store().get(id).await? else {
        // Deleted while running: nothing left to record on.
        return result;
    };
    let ended = OffsetDateTime::now_utc();
    if let Some(properties) = record.properties.as_object_mut() {
        properties.insert("timestamp".into(), Value::String(format_time(ended)));
        properties.insert(
            "duration".into(),
            Value::String(duration_text(ended - started)),
        );
        match &result {
            Ok(outputs) => {
                properties.insert("outputs".into(), outputs.clone());
                properties.insert(
                    "outputResources".into(),
                    Value::Array(
                        plan.order
                            .iter()
                            .map(|index| json!({ "id": plan.resources[*index].id.as_str() }))
                            .collect(),
                    ),
                );
                properties.remove("error");
            }
            Err(error) => {
                properties.insert("error".into(), error.to_json());
            }
        }
    }
    record.provisioning_state = if result.is_ok() {
        "Succeeded"
    } else {
        "Failed"
    }
    .to_owned();
    record.changed_at = ended;
    arm.store().upsert(&record).await?;
    result
}

/// ISO 8601 duration, as ARM reports deployment durations (`PT1.234S`).
fn duration_text(duration: time::Duration) -> String {
    format!("PT{:.3}S", duration.as_seconds_f64().max(0.0))
}

async fn run_resources(
    arm: &Arm,
    caller: &Caller,
    deployment_id: &ResourceId,
    plan: &Arc<Plan>,
) -> Result<Value, ArmError> {
    for index in &plan.order {
        let resource = &plan.resources[*index];
        let operation_id = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        let started = OffsetDateTime::now_utc();
        record_operation(
            arm,
            deployment_id,
            &operation_id,
            resource,
            "Running",
            started,
            None,
            None,
        )
        .await?;
        let result = deploy_one(arm, caller, plan, *index).await;
        match result {
            Ok(created) => {
                let status = if created { "Created" } else { "OK" };
                record_operation(
                    arm,
                    deployment_id,
                    &operation_id,
                    resource,
                    "Succeeded",
                    started,
                    Some(status),
                    None,
                )
                .await?;
            }
            Err(error) => {
                let status = error
                    .status()
                    .canonical_reason()
                    .unwrap_or("BadRequest")
                    .replace(' ', "");
                record_operation(
                    arm,
                    deployment_id,
                    &operation_id,
                    resource,
                    "Failed",
                    started,
                    Some(&status),
                    Some(&error),
                )
                .await?;
                return Err(ArmError::new(
                    StatusCode::BAD_REQUEST,
                    "DeploymentFailed",
                    "At least one resource deployment operation failed. Please list deployment operations for details. Please see https://aka.ms/arm-deployment-operations for usage details.",
                )
                .with_details(vec![error]));
            }
        }
    }
    evaluate_outputs(arm, caller, plan).await
}

/// What a run-time evaluation works on: one planned resource, or the outputs.
#[derive(Debug, Clone, Copy)]
enum Evaluated {
    Resource(usize),
    Outputs,
}

impl Evaluated {
    fn value(self, plan: &Plan) -> Value {
        match self {
            Evaluated::Resource(index) => plan.resources[index].raw.clone(),
            Evaluated::Outputs => Value::Object(plan.outputs.clone()),
        }
    }
}

/// Runs `work` with an evaluator over `plan` on a blocking thread, answering `reference()`
/// from `resolved` (or collecting its targets when `None`): expression evaluation is CPU
/// work, bounded by the plan's budget, and never holds an async worker.
async fn evaluate_blocking<T: Send + 'static>(
    plan: &Arc<Plan>,
    resolved: Option<HashMap<String, Value>>,
    work: impl FnOnce(&Plan, &Evaluator<'_>) -> Result<T, ArmError> + Send + 'static,
) -> Result<T, ArmError> {
    let plan = Arc::clone(plan);
    tokio::task::spawn_blocking(move || {
        let references = match &resolved {
            Some(resolved) => References::Resolved(resolved),
            None => References::Collect(RefCell::new(Vec::new())),
        };
        let evaluator = Evaluator::new(
            &plan.scope,
            &plan.parameters,
            &plan.variables,
            &plan.resource_names,
            references,
            &plan.budget,
        );
        work(&plan, &evaluator)
    })
    .await
    .map_err(|error| ArmError::internal(&error))?
}

/// Reads every resource a value refers to through `reference()`, keyed by id.
async fn resolve_references(
    arm: &Arm,
    caller: &Caller,
    plan: &Arc<Plan>,
    what: Evaluated,
) -> Result<HashMap<String, Value>, ArmError> {
    let targets = evaluate_blocking(plan, None, move |plan, collector| {
        collector.evaluate_json(&what.value(plan))?;
        Ok(collector.collected())
    })
    .await?;
    let mut resolved = HashMap::new();
    for target in targets {
        if resolved.contains_key(target.key()) {
            continue;
        }
        let api_version = plan
            .resources
            .iter()
            .find(|resource| resource.id == target)
            .map_or("2022-09-01", |resource| resource.api_version.as_str());
        let value = arm.get_resource(caller, api_version, &target).await?;
        resolved.insert(target.key().to_owned(), value);
    }
    Ok(resolved)
}

/// PUTs one template resource; returns whether it was created.
async fn deploy_one(
    arm: &Arm,
    caller: &Caller,
    plan: &Arc<Plan>,
    index: usize,
) -> Result<bool, ArmError> {
    let resource = &plan.resources[index];
    let resolved = resolve_references(arm, caller, plan, Evaluated::Resource(index)).await?;
    let evaluated = evaluate_blocking(plan, Some(resolved), move |plan, evaluator| {
        evaluator.evaluate_json(&plan.resources[index].raw)
    })
    .await?;
    let mut body = Map::new();
    for field in [
        "location",
        "tags",
        "identity",
        "properties",
        "sku",
        "kind",
        "plan",
        "zones",
    ] {
        if let Some(value) = evaluated.get(field) {
            body.insert(field.to_owned(), value.clone());
        }
    }
    let (_, created) = arm
        .put_resource_and_wait(
            caller,
            &resource.api_version,
            &resource.id,
            Value::Object(body),
        )
        .await?;
    Ok(created)
}

async fn evaluate_outputs(arm: &Arm, caller: &Caller, plan: &Arc<Plan>) -> Result<Value, ArmError> {
    let resolved = resolve_references(arm, caller, plan, Evaluated::Outputs).await?;
    evaluate_blocking(plan, Some(resolved), |plan, evaluator| {
        let mut result = Map::new();
        for (name, output) in &plan.outputs {
            if let Some(condition) = output.get("condition")
                && evaluator.evaluate_json(condition)? == Value::Bool(false)
            {
                continue;
            }
            let value = output
                .get("value")
                .map(|value| evaluator.evaluate_json(value))
                .transpose()?
                .unwrap_or(Value::Null);
            result.insert(
                name.clone(),
                json!({ "type": output.get("type").cloned().unwrap_or(Value::Null), "value": value }),
            );
        }
        Ok(Value::Object(result))
    })
    .await
}

#[allow(clippy::too_many_arguments)]
async fn record_operation(
    arm: &Arm,
    deployment_id: &ResourceId,
    operation_id: &str,
    resource: &PlannedResource,
    state: &str,
    started: OffsetDateTime,
    status_code: Option<&str>,
    error: Option<&ArmError>,
) -> Result<(), ArmError> {
    let Some(id) = deployment_id.child("operations", operation_id) else {
        return Err(ArmError::internal(
            &"a deployment operation id could not be built",
        ));
    };
    let now = OffsetDateTime::now_utc();
    let mut properties = json!({
        "provisioningOperation": "Create",
        "timestamp": format_time(now),
        "duration": duration_text(now - started),
        "trackingId": uuid::Uuid::new_v4().to_string(),
        "targetResource": {
            "id": resource.id.as_str(),
            "resourceType": resource.resource_type,
            "resourceName": resource.id.qualified_name(),
            "apiVersion": resource.api_version,
        },
    });
    if let Some(status_code) = status_code {
        properties["statusCode"] = Value::String(status_code.to_owned());
    }
    if let Some(error) = error {
        properties["statusMessage"] = json!({ "status": "Failed", "error": error.to_json() });
    }
    let record = Resource {
        id,
        location: None,
        tags: None,
        properties,
        identity: None,
        sku: None,
        kind: None,
        provisioning_state: state.to_owned(),
        created_at: started,
        changed_at: now,
    };
    arm.store().upsert(&record).await?;
    Ok(())
}

fn deployment_not_found(id: &ResourceId) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "DeploymentNotFound",
        format!("Deployment '{}' could not be found.", id.name()),
    )
}

fn operation_json(resource: &Resource) -> Value {
    let mut properties = resource.properties.clone();
    properties["provisioningState"] = Value::String(resource.provisioning_state.clone());
    json!({ "id": resource.id.as_str(), "operationId": resource.id.name(), "properties": properties })
}

fn deployment_json(resource: &Resource) -> Value {
    let mut value = resource.to_json();
    if let Some(object) = value.as_object_mut() {
        object.remove("systemData");
    }
    value
}

/// `GET` of a deployment or one of its operations.
pub(crate) async fn get_deployment_resource(arm: &Arm, id: &ResourceId) -> Result<Value, ArmError> {
    let Some(resource) = arm.store().get(id).await? else {
        return Err(deployment_not_found(id));
    };
    let is_operation = id.resource_type().is_some_and(|resource_type| {
        resource_type.eq_ignore_ascii_case(DEPLOYMENT_OPERATIONS_TYPE)
    });
    Ok(if is_operation {
        operation_json(&resource)
    } else {
        deployment_json(&resource)
    })
}

/// Lists deployments of a resource group, or operations of a deployment.
pub(crate) async fn list_deployment_resources(
    arm: &Arm,
    parent: &ResourceId,
    resource_type: &str,
) -> Result<Value, ArmError> {
    let is_operations = resource_type.eq_ignore_ascii_case(DEPLOYMENT_OPERATIONS_TYPE);
    let resources = arm.store().list_children(parent, resource_type).await?;
    let values: Vec<Value> = resources
        .iter()
        .map(|resource| {
            if is_operations {
                operation_json(resource)
            } else {
                deployment_json(resource)
            }
        })
        .collect();
    Ok(json!({ "value": values }))
}

/// POST actions on a deployment: `validate`.
pub(crate) async fn deployment_action(
    arm: &Arm,
    _caller: &Caller,
    id: &ResourceId,
    action: &str,
    body: Value,
) -> Result<Outcome, ArmError> {
    if !action.eq_ignore_ascii_case("validate") {
        return Err(ArmError::new(
            StatusCode::NOT_FOUND,
            "InvalidAction",
            format!("The action '{action}' is not supported on deployments."),
        ));
    }
    let group = deployment_group(id)?;
    let scope = deployment_scope(arm, &group, id.name()).await?;
    let plan = prepare_blocking(scope, body).await?;
    let validated: Vec<Value> = plan
        .order
        .iter()
        .map(|index| {
            let resource = &plan.resources[*index];
            json!({ "id": resource.id.as_str(), "type": resource.resource_type, "name": resource.id.qualified_name(), "apiVersion": resource.api_version })
        })
        .collect();
    Ok(Outcome::Done {
        status: StatusCode::OK,
        body: Some(json!({
            "id": id.as_str(),
            "name": id.name(),
            "type": DEPLOYMENTS_TYPE,
            "properties": {
                "provisioningState": "Succeeded",
                "mode": plan.mode,
                "parameters": plan.reported_parameters,
                "validatedResources": validated,
                "dependencies": dependencies_json(&plan),
            },
        })),
    })
}

/// Entry points for the fuzz targets in `fuzz/`: template evaluation without a store, in a
/// fixed resource group, with the limits and budget of a real deployment. Any input either
/// evaluates or is an error.
pub mod fuzzing {
    use super::*;

    fn scope() -> DeploymentScope {
        DeploymentScope {
            subscription_id: "00000000-0000-0000-0000-000000000001".to_owned(),
            subscription_display_name: "fuzz".to_owned(),
            tenant_id: "00000000-0000-0000-0000-000000000002".to_owned(),
            resource_group: "rg".to_owned(),
            resource_group_location: "westus3".to_owned(),
            deployment_name: "fuzz".to_owned(),
        }
    }

    /// Plans a deployment whose PUT body is `body`: everything a PUT checks and evaluates
    /// before anything deploys (limits, parameters, variables, conditions, names, scopes,
    /// dependencies, outputs).
    pub fn plan_deployment(body: &Value) -> Result<(), ArmError> {
        prepare(scope(), body).map(|_| ())
    }

    /// Evaluates one template string (an `[expression]`, a `[[` escape or a literal) as a
    /// resource field is evaluated, against fixed parameters and variables (some using
    /// others, one using itself), with a fresh deployment budget.
    pub fn evaluate_template_string(text: &str) -> Result<Value, ArmError> {
        let scope = scope();
        let parameters = match json!({
            "name": "kv1",
            "count": 3,
            "flag": true,
            "tags": {"env": "test", "list": [1, 2, 3]},
            "names": ["a", "b", "c"],
        }) {
            Value::Object(parameters) => parameters,
            _ => Map::new(),
        };
        let variables = match json!({
            "prefix": "[concat('p-', parameters('name'))]",
            "doubled": "[concat(variables('prefix'), variables('prefix'))]",
            "object": {"key": "[variables('prefix')]", "array": "[parameters('names')]"},
            "loop": "[variables('loop')]",
        }) {
            Value::Object(variables) => variables,
            _ => Map::new(),
        };
        let mut names = HashMap::new();
        names.insert(
            "vault".to_owned(),
            scope
                .resource_group_id()
                .with_resource("Microsoft.KeyVault/vaults", &["vault"])
                .ok_or_else(|| ArmError::internal(&"a fuzzing resource id"))?,
        );
        let budget = Budget::default();
        let evaluator = Evaluator::new(
            &scope,
            &parameters,
            &variables,
            &names,
            References::Collect(RefCell::new(Vec::new())),
            &budget,
        );
        evaluator.evaluate_string(text)
    }
}
