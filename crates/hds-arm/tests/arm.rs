//! The control plane through its HTTP surface, on SQLite and on a throwaway PostgreSQL
//! cluster: a fake `Microsoft.Test/widgets` provider (with a child type), async operations,
//! access control, moves, and the two seed ARM templates deployed against fake providers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hds_arm::{
    AllowAll, Arm, ArmAccessControl, ArmConfig, ArmError, ArmFuture, Caller, PlainProvider,
    ProviderResponse, PutRequest, RequestContext, ResourceId, ResourceProvider, Subscription,
};
use hds_db::Database;
use hds_db::testing::PostgresCluster;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt;

const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";
const OTHER_SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000002";
const TENANT: &str = "11111111-1111-1111-1111-111111111111";
const API: &str = "api-version=2023-06-01-preview";

fn caller() -> Caller {
    Caller {
        principal_id: "22222222-2222-2222-2222-222222222222".into(),
        tenant_id: TENANT.into(),
    }
}

fn config() -> ArmConfig {
    ArmConfig {
        tenant_id: TENANT.into(),
        subscriptions: vec![
            Subscription {
                subscription_id: SUBSCRIPTION.into(),
                display_name: "First".into(),
            },
            Subscription {
                subscription_id: OTHER_SUBSCRIPTION.into(),
                display_name: "Second".into(),
            },
        ],
        public_base_url: Some("https://arm.example".into()),
    }
}

enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database; the temporary directory (SQLite) must outlive it.
async fn database(backend: Backend) -> (Option<tempfile::TempDir>, Database) {
    match backend {
        Backend::Sqlite => {
            let directory = tempfile::tempdir().expect("temporary directory");
            let url = format!("sqlite:{}", directory.path().join("hds.db").display());
            let database = Database::connect(&url).await.expect("open SQLite");
            (Some(directory), database)
        }
        Backend::Postgres => {
            let cluster = PostgresCluster::shared().expect("PostgreSQL test cluster");
            let url = cluster.fresh_database().await.expect("fresh database");
            (
                None,
                Database::connect(&url).await.expect("open PostgreSQL"),
            )
        }
    }
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    call_with(router, method, path, body, &[]).await
}

async fn call_with(
    router: &Router,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:1");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = match body {
        Some(body) => Body::from(body.to_string()),
        None => Body::empty(),
    };
    let request = request.body(body).expect("request");
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible router");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, headers, value)
}

fn group_path(group: &str) -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}")
}

async fn create_group(router: &Router, subscription: &str, group: &str) {
    let (status, _, body) = call(
        router,
        Method::PUT,
        &format!("/subscriptions/{subscription}/resourcegroups/{group}?api-version=2021-04-01"),
        Some(json!({"location": "westus3"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Follows an `Azure-AsyncOperation` URL until the operation ends; returns its status body.
async fn wait_for_operation(router: &Router, headers: &HeaderMap) -> Value {
    let url = headers
        .get("azure-asyncoperation")
        .and_then(|value| value.to_str().ok())
        .expect("Azure-AsyncOperation header");
    let path = url
        .strip_prefix("https://arm.example")
        .expect("absolute URL on the public base");
    assert_eq!(
        headers
            .get("location")
            .and_then(|value| value.to_str().ok()),
        Some(url)
    );
    for _ in 0..2000 {
        let (status, _, body) = call(router, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["status"] != "InProgress" {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the operation did not finish");
}

// ---- the fake widgets provider ---------------------------------------------------------

#[derive(Default)]
struct Widgets {
    puts: AtomicUsize,
    release: Arc<Notify>,
    moved: Mutex<Vec<(String, String)>>,
}

impl ResourceProvider for Widgets {
    fn resource_types(&self) -> Vec<&'static str> {
        vec!["Microsoft.Test/widgets", "Microsoft.Test/widgets/parts"]
    }

    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            self.puts.fetch_add(1, Ordering::SeqCst);
            let mut request = PutRequest::parse(&body)?;
            let color = request.properties.get("color").cloned();
            let Some(Value::String(color)) = color else {
                return Err(ArmError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidColor",
                    "A widget needs a color.",
                ));
            };
            request.properties["colorUpper"] = Value::String(color.to_uppercase());
            let slow = request.properties.get("slow") == Some(&Value::Bool(true));
            let fail = request.properties.get("failLater") == Some(&Value::Bool(true));
            if !slow {
                let resource = context.store.put_succeeded(&id, &request).await?;
                return Ok(ProviderResponse::Completed(resource.to_json()));
            }
            let mut resource = hds_arm::Resource::from_request(id.clone(), &request, "Creating");
            if let Some(existing) = context.store.get(&id).await? {
                resource.created_at = existing.created_at;
            }
            context.store.upsert(&resource).await?;
            // The work waits for the test to release it, so the test can see InProgress.
            let release = self.release.clone();
            let completion: futures::future::BoxFuture<'static, Result<(), ArmError>> =
                Box::pin(async move {
                    release.notified().await;
                    if fail {
                        Err(ArmError::new(
                            StatusCode::CONFLICT,
                            "WidgetJammed",
                            "The widget jammed.",
                        ))
                    } else {
                        Ok(())
                    }
                });
            Ok(ProviderResponse::Accepted {
                body: Some(resource.to_json()),
                completion,
            })
        })
    }

    fn post_action(
        &self,
        context: RequestContext,
        id: ResourceId,
        action: String,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            if action.eq_ignore_ascii_case("polish") && context.store.get(&id).await?.is_some() {
                Ok(ProviderResponse::Completed(
                    json!({"polished": true, "with": body["with"]}),
                ))
            } else {
                Err(ArmError::new(
                    StatusCode::NOT_FOUND,
                    "InvalidAction",
                    "No such action.",
                ))
            }
        })
    }

    fn on_moved(
        &self,
        _context: RequestContext,
        old_id: ResourceId,
        new_id: ResourceId,
    ) -> ArmFuture<'_, ()> {
        Box::pin(async move {
            self.moved
                .lock()
                .expect("lock")
                .push((old_id.as_str().to_owned(), new_id.as_str().to_owned()));
            Ok(())
        })
    }
}

async fn widgets_suite(backend: Backend) {
    let (_directory, database) = database(backend).await;
    let widgets = Arc::new(Widgets::default());
    let arm = Arm::builder(database, config(), Arc::new(AllowAll::new(caller())))
        .provider(widgets.clone())
        .provider(Arc::new(PlainProvider::new(vec![
            "Microsoft.Authorization/roleAssignments",
        ])))
        .build()
        .await
        .expect("control plane");
    let router = hds_arm::router(arm.clone());

    // api-version is required and must be well formed, on every route.
    let (status, _, body) = call(&router, Method::GET, "/subscriptions", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "MissingApiVersionParameter");
    assert!(body["error"]["message"].is_string());
    assert_eq!(body["error"]["details"], json!([]));
    let (status, _, body) = call(
        &router,
        Method::GET,
        "/subscriptions?api-version=yesterday",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "InvalidApiVersionParameter");

    // Subscriptions and tenants.
    let (status, _, body) = call(
        &router,
        Method::GET,
        "/subscriptions?api-version=2022-12-01",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["value"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["value"][0]["tenantId"], TENANT);
    let (status, _, body) = call(
        &router,
        Method::GET,
        &format!("/subscriptions/{SUBSCRIPTION}?api-version=2022-12-01"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["displayName"].clone()),
        (StatusCode::OK, json!("First"))
    );
    let (status, _, body) = call(
        &router,
        Method::GET,
        "/subscriptions/nope?api-version=2022-12-01",
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("SubscriptionNotFound"))
    );
    let (status, _, body) = call(
        &router,
        Method::GET,
        "/tenants?api-version=2022-12-01",
        None,
    )
    .await;
    assert_eq!(
        (status, body["value"][0]["tenantId"].clone()),
        (StatusCode::OK, json!(TENANT))
    );

    // Resource groups, case-insensitively.
    let widget = format!("{}/providers/Microsoft.Test/widgets/w1", group_path("rg1"));
    let (status, _, body) = call(
        &router,
        Method::PUT,
        &format!("{widget}?{API}"),
        Some(json!({"properties": {"color": "red"}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("ResourceGroupNotFound"))
    );
    create_group(&router, SUBSCRIPTION, "rg1").await;
    let (status, _, body) = call(
        &router,
        Method::GET,
        &format!("/subscriptions/{SUBSCRIPTION}/RESOURCEGROUPS/RG1?api-version=2021-04-01"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["name"].clone()),
        (StatusCode::OK, json!("rg1"))
    );
    // Other spellings of the first segment reach `handle` through a fallback.
    assert!(hds_arm::is_arm_path("/SUBSCRIPTIONS/x") && !hds_arm::is_arm_path("/dicom/x"));
    let fallback = Router::new()
        .fallback(hds_arm::handle)
        .with_state(arm.clone());
    let (status, _, body) = call(
        &fallback,
        Method::GET,
        &format!("/SUBSCRIPTIONS/{SUBSCRIPTION}/RESOURCEGROUPS/RG1?api-version=2021-04-01"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "rg1");
    assert_eq!(body["properties"]["provisioningState"], "Succeeded");
    let (status, _, _) = call(
        &router,
        Method::HEAD,
        &format!("{}?api-version=2021-04-01", group_path("rg1")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(
        &router,
        Method::HEAD,
        &format!("{}?api-version=2021-04-01", group_path("absent")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = call(
        &router,
        Method::PUT,
        &format!("{}?api-version=2021-04-01", group_path("rg1")),
        Some(json!({"location": "eastus"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("InvalidResourceGroupLocation"))
    );
    let (status, _, body) = call(
        &router,
        Method::GET,
        &format!("/subscriptions/{SUBSCRIPTION}/resourcegroups?api-version=2021-04-01"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["value"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1))
    );

    // Unregistered types, and bodies that are not JSON.
    let (status, _, body) = call(
        &router,
        Method::PUT,
        &format!(
            "{}/providers/Microsoft.Nope/things/t?{API}",
            group_path("rg1")
        ),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "NoRegisteredProviderFound");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("Microsoft.Test/widgets"))
    );
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!("{widget}?{API}"))
        .body(Body::from("{not json"))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // PUT validates (provider error codes pass through), creates 201, replaces 200.
    let (status, _, body) = call(
        &router,
        Method::PUT,
        &format!("{widget}?{API}"),
        Some(json!({"properties": {}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("InvalidColor"))
    );
    let (status, _, body) = call(
        &router,
        Method::PUT,
        &format!("{widget}?{API}"),
        Some(json!({"location": "westus3", "tags": {"a": "1"}, "properties": {"color": "red"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["id"], widget);
    assert_eq!(body["type"], "Microsoft.Test/widgets");
    assert_eq!(body["properties"]["colorUpper"], "RED");
    assert_eq!(body["properties"]["provisioningState"], "Succeeded");
    let before = widgets.puts.load(Ordering::SeqCst);
    let (status, _, _) = call(
        &router,
        Method::PUT,
        &format!("{widget}?{API}"),
        Some(json!({"location": "westus3", "tags": {"a": "1"}, "properties": {"color": "red"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        widgets.puts.load(Ordering::SeqCst),
        before + 1,
        "an unchanged PUT is validated again"
    );

    // GET in another letter case; 404 for an absent widget.
    let (status, _, body) = call(
        &fallback,
        Method::GET,
        &format!(
            "{}?{API}",
            widget.to_uppercase().replace("API-VERSION", "api-version")
        ),
        None,
    )
    .await;
    assert_eq!(
        (status, body["properties"]["color"].clone()),
        (StatusCode::OK, json!("red"))
    );
    let (status, _, body) = call(
        &router,
        Method::GET,
        &format!(
            "{}/providers/Microsoft.Test/widgets/absent?{API}",
            group_path("rg1")
        ),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("ResourceNotFound"))
    );

    // Children need their parent.
    let part = format!("{widget}/parts/p1");
    let (status, _, body) = call(
        &router,
        Method::PUT,
        &format!(
            "{}/providers/Microsoft.Test/widgets/absent/parts/p1?{API}",
            group_path("rg1")
        ),
        Some(json!({"properties": {"color": "blue"}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("ParentResourceNotFound"))
    );
    let (status, _, _) = call(
        &router,
        Method::PUT,
        &format!("{part}?{API}"),
        Some(json!({"properties": {"color": "blue"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // Extension resources sit on any scope.
    let assignment = format!(
        "{widget}/providers/Microsoft.Authorization/roleAssignments/6f0f7d8e-2f4c-4c55-9a3e-0d4f8f5b1a11"
    );
    let (status, _, body) = call(
        &router,
        Method::PUT,
        &format!("{assignment}?api-version=2022-04-01"),
        Some(json!({"properties": {"principalId": "p"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["type"], "Microsoft.Authorization/roleAssignments");
    let (status, _, body) = call(
        &router,
        Method::GET,
        &format!(
            "{widget}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01"
        ),
        None,
    )
    .await;
    assert_eq!(
        (status, body["value"][0]["id"].clone()),
        (StatusCode::OK, json!(assignment))
    );
    let (status, _, body) = call(&router, Method::PUT, &format!("{}/providers/Microsoft.Test/widgets/absent/providers/Microsoft.Authorization/roleAssignments/0b1f3c2e-7a4d-4e8f-9c6b-5d2a1e0f9b8c?api-version=2022-04-01", group_path("rg1")), Some(json!({}))).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("ParentResourceNotFound"))
    );

    // Lists at each collection level.
    let (status, _, body) = call(
        &router,
        Method::GET,
        &format!(
            "{}/providers/Microsoft.Test/widgets?{API}",
            group_path("rg1")
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["value"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["value"][0]["name"], "w1");
    let (status, _, body) =
        call(&router, Method::GET, &format!("{widget}/parts?{API}"), None).await;
    assert_eq!(
        (status, body["value"][0]["name"].clone()),
        (StatusCode::OK, json!("p1"))
    );
    let (status, _, body) = call(
        &router,
        Method::GET,
        &format!("{}/resources?api-version=2021-04-01", group_path("rg1")),
        None,
    )
    .await;
    assert_eq!(
        (status, body["value"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1))
    );

    // PATCH merges and re-validates.
    let (status, _, body) = call(
        &router,
        Method::PATCH,
        &format!("{widget}?{API}"),
        Some(json!({"tags": {"b": "2"}, "properties": {"color": "green"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tags"], json!({"a": "1", "b": "2"}));
    assert_eq!(body["properties"]["colorUpper"], "GREEN");
    let (status, _, body) = call(
        &router,
        Method::PATCH,
        &format!("{widget}?{API}"),
        Some(json!({"properties": {"color": null}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("InvalidColor"))
    );

    // POST actions.
    let (status, _, body) = call(
        &router,
        Method::POST,
        &format!("{widget}/polish?{API}"),
        Some(json!({"with": "wax"})),
    )
    .await;
    assert_eq!(
        (status, body.clone()),
        (StatusCode::OK, json!({"polished": true, "with": "wax"}))
    );
    let (status, _, _) = call(
        &router,
        Method::POST,
        &format!("{widget}/explode?{API}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Async operations: 201 + Azure-AsyncOperation, InProgress until the work ends.
    let slow = format!(
        "{}/providers/Microsoft.Test/widgets/slow?{API}",
        group_path("rg1")
    );
    let (status, headers, body) = call(
        &router,
        Method::PUT,
        &slow,
        Some(json!({"location": "West US 3", "properties": {"color": "red", "slow": true}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["properties"]["provisioningState"], "Creating");
    let operation_url = headers
        .get("azure-asyncoperation")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(operation_url.contains(&format!("/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Test/locations/westus3/operationStatuses/")), "{operation_url}");
    let status_path = operation_url
        .strip_prefix("https://arm.example")
        .unwrap_or_default()
        .to_owned();
    let (_, _, running) = call(&router, Method::GET, &status_path, None).await;
    assert_eq!(running["status"], "InProgress");
    assert!(running.get("endTime").is_none());
    widgets.release.notify_one();
    let operation = wait_for_operation(&router, &headers).await;
    assert_eq!(operation["status"], "Succeeded");
    assert!(operation["startTime"].is_string() && operation["endTime"].is_string());
    let (_, _, body) = call(&router, Method::GET, &slow, None).await;
    assert_eq!(body["properties"]["provisioningState"], "Succeeded");

    let jammed = format!(
        "{}/providers/Microsoft.Test/widgets/jammed?{API}",
        group_path("rg1")
    );
    let (status, headers, _) = call(
        &router,
        Method::PUT,
        &jammed,
        Some(json!({"properties": {"color": "red", "slow": true, "failLater": true}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    widgets.release.notify_one();
    let operation = wait_for_operation(&router, &headers).await;
    assert_eq!(operation["status"], "Failed");
    assert_eq!(operation["error"]["code"], "WidgetJammed");
    let (_, _, body) = call(&router, Method::GET, &jammed, None).await;
    assert_eq!(body["properties"]["provisioningState"], "Failed");

    // Move to a group of another subscription: the child moves along, the provider is told.
    create_group(&router, OTHER_SUBSCRIPTION, "target").await;
    let target_group = format!("/subscriptions/{OTHER_SUBSCRIPTION}/resourceGroups/target");
    let (status, _, body) = call(
        &router,
        Method::POST,
        &format!("{}/moveResources?api-version=2021-04-01", group_path("rg1")),
        Some(json!({"resources": [widget], "targetResourceGroup": target_group})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _, _) = call(&router, Method::GET, &format!("{widget}?{API}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let moved_part = format!("{target_group}/providers/Microsoft.Test/widgets/w1/parts/p1");
    let (status, _, body) = call(&router, Method::GET, &format!("{moved_part}?{API}"), None).await;
    assert_eq!(
        (status, body["id"].clone()),
        (StatusCode::OK, json!(moved_part))
    );
    let moved = widgets.moved.lock().expect("lock").clone();
    assert_eq!(moved.len(), 2);
    assert_eq!(
        moved[0],
        (
            widget.clone(),
            format!("{target_group}/providers/Microsoft.Test/widgets/w1")
        )
    );
    assert_eq!(moved[1].1, moved_part);

    // DELETE: 200 when it existed (children go too), 204 when it did not.
    let moved_widget = format!("{target_group}/providers/Microsoft.Test/widgets/w1?{API}");
    let (status, _, _) = call(&router, Method::DELETE, &moved_widget, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&router, Method::DELETE, &moved_widget, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(&router, Method::GET, &format!("{moved_part}?{API}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleting a group deletes what is in it.
    let (status, _, _) = call(
        &router,
        Method::DELETE,
        &format!("{}?api-version=2021-04-01", group_path("rg1")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(&router, Method::GET, &slow, None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("ResourceGroupNotFound"))
    );
    assert!(
        arm.store()
            .get(&ResourceId::parse(slow.split('?').next().unwrap_or_default()).expect("id"))
            .await
            .expect("store")
            .is_none()
    );
}

#[tokio::test]
async fn widgets_on_sqlite() {
    widgets_suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn widgets_on_postgres() {
    widgets_suite(Backend::Postgres).await;
}

// ---- access control ------------------------------------------------------------------------

/// Accepts `Bearer good` and refuses every delete.
struct NoDeletes;

impl ArmAccessControl for NoDeletes {
    fn authenticate<'a>(&'a self, headers: &'a HeaderMap) -> ArmFuture<'a, Caller> {
        Box::pin(async move {
            match headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
            {
                Some("Bearer good") => Ok(caller()),
                _ => Err(ArmError::unauthenticated(
                    "InvalidAuthenticationToken",
                    "The access token is missing or invalid.",
                    "https://login.example/tenant",
                )),
            }
        })
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        action: &'a str,
        scope: &'a ResourceId,
    ) -> ArmFuture<'a, ()> {
        Box::pin(async move {
            if action.ends_with("/delete") {
                Err(ArmError::authorization_failed(
                    &caller.principal_id,
                    action,
                    scope.as_str(),
                ))
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test]
async fn access_control_is_asked_and_its_errors_are_shaped_like_azure() {
    let (_directory, database) = database(Backend::Sqlite).await;
    let arm = Arm::builder(database, config(), Arc::new(NoDeletes))
        .provider(Arc::new(Widgets::default()))
        .build()
        .await
        .expect("control plane");
    let router = hds_arm::router(arm);
    let (status, headers, body) = call(
        &router,
        Method::GET,
        "/subscriptions?api-version=2022-12-01",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    let challenge = headers
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer authorization_uri=\"https://login.example/tenant\""),
        "{challenge}"
    );
    assert!(challenge.contains("error=\"invalid_token\""));

    let good = [("authorization", "Bearer good")];
    let path = format!("{}?api-version=2021-04-01", group_path("rg"));
    let (status, _, _) = call_with(
        &router,
        Method::PUT,
        &path,
        Some(json!({"location": "westus3"})),
        &good,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, body) = call_with(&router, Method::DELETE, &path, None, &good).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "AuthorizationFailed");
    let expected = format!(
        "The client '{0}' with object id '{0}' does not have authorization to perform action 'Microsoft.Resources/subscriptions/resourceGroups/delete' over scope '{1}' or the scope is invalid.",
        caller().principal_id,
        group_path("rg")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.starts_with(&expected)),
        "{body}"
    );
}

// ---- the seed templates against fake providers ----------------------------------------

/// Every PUT the fake providers received, in order: (type, id, body).
type Journal = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A fake provider for one seed type, computing the read-only values the real one does.
struct Fake {
    resource_type: &'static str,
    journal: Journal,
}

impl ResourceProvider for Fake {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![self.resource_type]
    }

    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            self.journal.lock().expect("lock").push((
                self.resource_type.to_owned(),
                id.as_str().to_owned(),
                body.clone(),
            ));
            let mut request = PutRequest::parse(&body)?;
            match self.resource_type {
                "Microsoft.KeyVault/vaults/keys" => {
                    let vault = id
                        .parent()
                        .map(|parent| parent.name().to_owned())
                        .unwrap_or_default();
                    let uri = format!("https://{vault}.vault.test/keys/{}", id.name());
                    request.properties["keyUri"] = Value::String(uri.clone());
                    request.properties["keyUriWithVersion"] =
                        Value::String(format!("{uri}/0123456789abcdef"));
                }
                "Microsoft.ManagedIdentity/userAssignedIdentities" => {
                    request.properties["principalId"] =
                        json!("33333333-3333-3333-3333-333333333333");
                    request.properties["tenantId"] = json!(TENANT);
                }
                "Microsoft.HealthcareApis/workspaces/dicomservices" => {
                    let url = &request.properties["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"];
                    if !url.as_str().is_some_and(|url| url.starts_with("https://")) {
                        return Err(ArmError::new(
                            StatusCode::BAD_REQUEST,
                            "InvalidKeyEncryptionKeyUrl",
                            "The key URL is not valid.",
                        ));
                    }
                }
                _ => {}
            }
            let resource = context.store.put_succeeded(&id, &request).await?;
            Ok(ProviderResponse::Completed(resource.to_json()))
        })
    }
}

const SEED_TYPES: [&str; 6] = [
    "Microsoft.KeyVault/vaults",
    "Microsoft.KeyVault/vaults/keys",
    "Microsoft.ManagedIdentity/userAssignedIdentities",
    "Microsoft.Authorization/roleAssignments",
    "Microsoft.HealthcareApis/workspaces",
    "Microsoft.HealthcareApis/workspaces/dicomservices",
];

async fn arm_with(database: Database, types: &[&'static str], journal: &Journal) -> Arm {
    let mut builder = Arm::builder(database, config(), Arc::new(AllowAll::new(caller())));
    for resource_type in types {
        builder = builder.provider(Arc::new(Fake {
            resource_type,
            journal: journal.clone(),
        }));
    }
    builder.build().await.expect("control plane")
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../tests/fixtures/arm/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

/// `guid('dicom-cmk-role')`, computed independently with Python's
/// `uuid.uuid5(UUID('11fb06fb-712d-4ddd-98c7-e71bbd588830'), 'dicom-cmk-role')`.
const ROLE_ASSIGNMENT_GUID: &str = "fbf0f43f-ad25-5c68-a1d5-d72bf6f5410c";

fn user_assigned_parameters() -> Value {
    json!({
        "workspaceName": {"value": "ws1"},
        "dicomServiceName": {"value": "dicom1"},
        "keyVaultName": {"value": "kv1"},
        "keyName": {"value": "key1"},
        "userAssignedIdentityName": {"value": "id1"},
        "roleAssignmentName": {"value": "dicom-cmk-role"},
        "tenantId": {"value": TENANT},
    })
}

async fn templates_suite(backend: Backend) {
    let (_directory, database) = database(backend).await;
    let journal: Journal = Arc::default();
    let arm = arm_with(database, &SEED_TYPES, &journal).await;
    let router = hds_arm::router(arm.clone());
    create_group(&router, SUBSCRIPTION, "rg").await;
    let deployment = format!(
        "{}/providers/Microsoft.Resources/deployments/cmk",
        group_path("rg")
    );

    // validate first: the plan, without deploying anything.
    let body = json!({"properties": {"mode": "Incremental", "template": fixture("arm-template-user-assigned.json"), "parameters": user_assigned_parameters()}});
    let (status, _, validated) = call(
        &router,
        Method::POST,
        &format!("{deployment}/validate?api-version=2021-04-01"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{validated}");
    assert_eq!(
        validated["properties"]["validatedResources"]
            .as_array()
            .map(Vec::len),
        Some(6)
    );
    assert!(journal.lock().expect("lock").is_empty());

    // The user-assigned template, as an async operation.
    let (status, headers, accepted) = call(
        &router,
        Method::PUT,
        &format!("{deployment}?api-version=2021-04-01"),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{accepted}");
    assert_eq!(accepted["type"], "Microsoft.Resources/deployments");
    let operation = wait_for_operation(&router, &headers).await;
    assert_eq!(operation["status"], "Succeeded", "{operation}");
    let (status, _, record) = call(
        &router,
        Method::GET,
        &format!("{deployment}?api-version=2021-04-01"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        record["properties"]["parameters"]["region"]["value"],
        "West US 3"
    );
    assert_eq!(
        record["properties"]["outputResources"]
            .as_array()
            .map(Vec::len),
        Some(6)
    );

    let entries = journal.lock().expect("lock").clone();
    let position = |resource_type: &str| {
        entries
            .iter()
            .position(|(entry_type, _, _)| entry_type == resource_type)
            .unwrap_or_else(|| panic!("{resource_type} was not deployed"))
    };
    let entry = |resource_type: &str| entries[position(resource_type)].clone();
    assert_eq!(entries.len(), 6);
    assert!(position("Microsoft.KeyVault/vaults") < position("Microsoft.KeyVault/vaults/keys"));
    assert!(
        position("Microsoft.KeyVault/vaults/keys")
            < position("Microsoft.Authorization/roleAssignments")
    );
    assert!(
        position("Microsoft.ManagedIdentity/userAssignedIdentities")
            < position("Microsoft.Authorization/roleAssignments")
    );
    assert!(
        position("Microsoft.Authorization/roleAssignments")
            < position("Microsoft.HealthcareApis/workspaces/dicomservices")
    );
    assert!(
        position("Microsoft.HealthcareApis/workspaces")
            < position("Microsoft.HealthcareApis/workspaces/dicomservices")
    );

    let group = group_path("rg");
    let (_, vault_id, vault_body) = entry("Microsoft.KeyVault/vaults");
    assert_eq!(
        vault_id,
        format!("{group}/providers/Microsoft.KeyVault/vaults/kv1")
    );
    assert_eq!(vault_body["properties"]["tenantId"], TENANT);
    assert_eq!(vault_body["location"], "West US 3");
    let (_, key_id, _) = entry("Microsoft.KeyVault/vaults/keys");
    assert_eq!(
        key_id,
        format!("{group}/providers/Microsoft.KeyVault/vaults/kv1/keys/key1")
    );
    let (_, role_id, role_body) = entry("Microsoft.Authorization/roleAssignments");
    assert_eq!(
        role_id,
        format!("{group}/providers/Microsoft.Authorization/roleAssignments/{ROLE_ASSIGNMENT_GUID}")
    );
    assert_eq!(
        role_body["properties"]["principalId"],
        "33333333-3333-3333-3333-333333333333"
    );
    assert_eq!(
        role_body["properties"]["roleDefinitionId"],
        format!(
            "{group}/providers/Microsoft.Authorization/roleDefinitions/14b46e9e-c2b7-41b4-b07b-48a6ebf60603"
        )
    );
    let (_, dicom_id, dicom_body) = entry("Microsoft.HealthcareApis/workspaces/dicomservices");
    assert_eq!(
        dicom_id,
        format!("{group}/providers/Microsoft.HealthcareApis/workspaces/ws1/dicomservices/dicom1")
    );
    assert_eq!(
        dicom_body["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"],
        "https://kv1.vault.test/keys/key1/0123456789abcdef"
    );
    let identity_id =
        format!("{group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1");
    assert_eq!(dicom_body["identity"]["type"], "userAssigned");
    assert_eq!(
        dicom_body["identity"]["userAssignedIdentities"],
        json!({ identity_id: {} })
    );

    let (status, _, operations) = call(
        &router,
        Method::GET,
        &format!("{deployment}/operations?api-version=2021-04-01"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let operations = operations["value"].as_array().cloned().unwrap_or_default();
    assert_eq!(operations.len(), 6);
    assert!(
        operations
            .iter()
            .all(|operation| operation["properties"]["provisioningState"] == "Succeeded")
    );
    assert!(
        operations
            .iter()
            .all(|operation| operation["properties"]["statusCode"] == "Created")
    );

    // Deploying again re-PUTs every resource (each provider validates again): all OK.
    let (status, headers, _) = call(
        &router,
        Method::PUT,
        &format!("{deployment}?api-version=2021-04-01"),
        Some(json!({"properties": {"mode": "Incremental", "template": fixture("arm-template-user-assigned.json"), "parameters": user_assigned_parameters()}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        wait_for_operation(&router, &headers).await["status"],
        "Succeeded"
    );
    assert_eq!(journal.lock().expect("lock").len(), 12);
    let (_, _, operations) = call(
        &router,
        Method::GET,
        &format!("{deployment}/operations?api-version=2021-04-01"),
        None,
    )
    .await;
    assert!(operations["value"].as_array().is_some_and(|operations| {
        operations.len() == 6
            && operations
                .iter()
                .all(|operation| operation["properties"]["statusCode"] == "OK")
    }));

    // A template error answers 400 at once.
    let (status, _, body) = call(
        &router,
        Method::PUT,
        &format!("{deployment}?api-version=2021-04-01"),
        Some(json!({"properties": {"mode": "Incremental", "template": fixture("arm-template-user-assigned.json"), "parameters": {"workspaceName": {"value": "ws1"}}}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "InvalidTemplate");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("dicomServiceName")),
        "{body}"
    );
}

#[tokio::test]
async fn seed_templates_on_sqlite() {
    templates_suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn seed_templates_on_postgres() {
    templates_suite(Backend::Postgres).await;
}

#[tokio::test]
async fn system_assigned_template_needs_only_the_dicom_service_provider() {
    let (_directory, database) = database(Backend::Sqlite).await;
    let journal: Journal = Arc::default();
    let arm = arm_with(
        database,
        &["Microsoft.HealthcareApis/workspaces/dicomservices"],
        &journal,
    )
    .await;
    let router = hds_arm::router(arm.clone());
    create_group(&router, SUBSCRIPTION, "rg").await;
    // The workspace exists already (created earlier, by whatever means).
    let workspace = ResourceId::parse(&format!(
        "{}/providers/Microsoft.HealthcareApis/workspaces/ws1",
        group_path("rg")
    ))
    .expect("id");
    arm.store()
        .put_succeeded(
            &workspace,
            &PutRequest {
                location: Some("westus3".into()),
                ..PutRequest::default()
            },
        )
        .await
        .expect("workspace");

    let group = ResourceId::resource_group(SUBSCRIPTION, "rg");
    let result = arm
        .deploy(
            &caller(),
            &group,
            "system",
            fixture("arm-template-system-assigned.json"),
            json!({
                "workspaceName": {"value": "ws1"},
                "dicomServiceName": {"value": "dicom1"},
                "keyEncryptionKeyUrl": {"value": "https://kv1.vault.test/keys/key1"},
            }),
        )
        .await
        .expect("deployment succeeds");
    assert_eq!(result["properties"]["provisioningState"], "Succeeded");
    let entries = journal.lock().expect("lock").clone();
    assert_eq!(entries.len(), 1);
    let (_, id, body) = &entries[0];
    assert_eq!(id, &format!("{workspace}/dicomservices/dicom1"));
    assert_eq!(body["identity"], json!({"type": "SystemAssigned"}));
    assert_eq!(body["location"], "West US 3");
    assert_eq!(
        body["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"],
        "https://kv1.vault.test/keys/key1"
    );

    // A provider's refusal fails the deployment with DeploymentFailed and the cause.
    let failure = arm
        .deploy(
            &caller(),
            &group,
            "bad-url",
            fixture("arm-template-system-assigned.json"),
            json!({
                "workspaceName": {"value": "ws1"},
                "dicomServiceName": {"value": "dicom2"},
                "keyEncryptionKeyUrl": {"value": "not a url"},
            }),
        )
        .await;
    let Err(error) = failure else {
        panic!("the deployment should fail")
    };
    assert_eq!(error.code(), "DeploymentFailed");
    assert_eq!(error.details()[0].code(), "InvalidKeyEncryptionKeyUrl");
    let (status, _, record) = call(
        &router,
        Method::GET,
        &format!(
            "{}/providers/Microsoft.Resources/deployments/bad-url?api-version=2021-04-01",
            group_path("rg")
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["properties"]["provisioningState"], "Failed");
    assert_eq!(
        record["properties"]["error"]["details"][0]["code"],
        "InvalidKeyEncryptionKeyUrl"
    );
}

#[tokio::test]
async fn a_failed_resource_stops_the_deployment() {
    let (_directory, database) = database(Backend::Sqlite).await;
    let journal: Journal = Arc::default();
    // No role assignment provider: that resource fails, the DICOM service is never deployed.
    let types: Vec<&'static str> = SEED_TYPES
        .iter()
        .copied()
        .filter(|resource_type| *resource_type != "Microsoft.Authorization/roleAssignments")
        .collect();
    let arm = arm_with(database, &types, &journal).await;
    let router = hds_arm::router(arm.clone());
    create_group(&router, SUBSCRIPTION, "rg").await;
    let deployment = format!(
        "{}/providers/Microsoft.Resources/deployments/partial?api-version=2021-04-01",
        group_path("rg")
    );
    let (status, headers, _) = call(
        &router,
        Method::PUT,
        &deployment,
        Some(json!({"properties": {"mode": "Incremental", "template": fixture("arm-template-user-assigned.json"), "parameters": user_assigned_parameters()}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let operation = wait_for_operation(&router, &headers).await;
    assert_eq!(operation["status"], "Failed");
    assert_eq!(operation["error"]["code"], "DeploymentFailed");
    assert_eq!(
        operation["error"]["details"][0]["code"],
        "NoRegisteredProviderFound"
    );
    let deployed: Vec<String> = journal
        .lock()
        .expect("lock")
        .iter()
        .map(|(resource_type, _, _)| resource_type.clone())
        .collect();
    assert!(
        !deployed
            .iter()
            .any(|resource_type| resource_type
                == "Microsoft.HealthcareApis/workspaces/dicomservices")
    );
    let (_, _, record) = call(&router, Method::GET, &deployment, None).await;
    assert_eq!(record["properties"]["provisioningState"], "Failed");
}

/// An operation whose node died (its lease ran out) is finished as Failed by any node's sweep,
/// once, with what to do, and its resource's provisioning state follows; an operation whose
/// lease holds is left alone.
async fn abandoned_operations_suite(backend: Backend) {
    use hds_arm::{Operation, OperationStatus, ResourceStore};

    let (_directory, database) = database(backend).await;
    let store = ResourceStore::open(database).await.expect("store");
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let operation = |id: &str| Operation {
        id: id.into(),
        subscription: SUBSCRIPTION.into(),
        namespace: "Microsoft.Widgets".into(),
        location: "global".into(),
        resource_id: format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/g/providers/Microsoft.Widgets/widgets/{id}"
        ),
        status: OperationStatus::InProgress,
        start_time: time::OffsetDateTime::now_utc(),
        end_time: None,
        error: None,
    };
    let dead = operation("00000000-0000-0000-0000-00000000dead");
    let alive = operation("00000000-0000-0000-0000-0000000a11fe");
    for (operation, until_ms) in [(&dead, now_ms - 1_000), (&alive, now_ms + 30_000)] {
        store.create_operation(operation).await.expect("create");
        store
            .lease_operation(&operation.id, "node-a", until_ms, true)
            .await
            .expect("lease");
    }
    assert_eq!(
        store
            .fail_abandoned_operations(now_ms)
            .await
            .expect("sweep"),
        1
    );
    // A second sweep (another node's) finds nothing left to do.
    assert_eq!(
        store
            .fail_abandoned_operations(now_ms)
            .await
            .expect("sweep"),
        0
    );
    let finished = store
        .get_operation(&dead.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(finished.status, OperationStatus::Failed);
    let error = finished.error.expect("an error");
    assert_eq!(error["code"], "OperationAbandoned");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Send the request again")
    );
    let running = store
        .get_operation(&alive.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(running.status, OperationStatus::InProgress);
}

#[tokio::test]
async fn abandoned_operations_on_sqlite() {
    abandoned_operations_suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn abandoned_operations_on_postgres() {
    abandoned_operations_suite(Backend::Postgres).await;
}
