//! Control-plane commands: `hds rest` (like `az rest`) and `hds deployment group create`
//! (like `az deployment group create`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::account::access_token;
use crate::client::credentials::{ConnectionOptions, Profile, http_client};
use crate::client::output::OutputOptions;

/// The audience of the control plane.
pub const MANAGEMENT: &str = "https://management.azure.com";
/// The api-version used for deployments.
const DEPLOYMENTS_API_VERSION: &str = "2022-09-01";

/// Options of `hds rest`.
#[derive(Debug, Args)]
pub struct RestOptions {
    /// HTTP method.
    #[arg(long, short = 'm', default_value = "get")]
    pub method: String,
    /// The URL: absolute, or a path such as /subscriptions/{s}/resourceGroups?api-version=2022-09-01.
    #[arg(long, short = 'u')]
    pub url: String,
    /// The JSON body, or @FILE.
    #[arg(long, short = 'b')]
    pub body: Option<String>,
    /// The audience of the token sent (default: the control plane).
    #[arg(long, default_value = MANAGEMENT)]
    pub resource: String,
    #[command(flatten)]
    pub connection: ConnectionOptions,
    #[command(flatten)]
    pub output: OutputOptions,
}

/// `hds deployment ...`.
#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// Deployments at resource-group scope.
    #[command(subcommand)]
    Group(GroupDeploymentCommand),
}

/// `hds deployment group ...`.
#[derive(Debug, Subcommand)]
pub enum GroupDeploymentCommand {
    /// Deploy an ARM template to a resource group and wait for the result.
    Create(DeploymentCreateOptions),
}

/// Options of `hds deployment group create`.
#[derive(Debug, Args)]
pub struct DeploymentCreateOptions {
    /// The resource group.
    #[arg(long, short = 'g')]
    pub resource_group: String,
    /// The deployment's name (default: the template file's stem).
    #[arg(long, short = 'n')]
    pub name: Option<String>,
    /// The template file.
    #[arg(long, short = 'f')]
    pub template_file: PathBuf,
    /// Parameters as NAME=VALUE, or @FILE for a parameters file.
    #[arg(long, short = 'p', num_args = 1..)]
    pub parameters: Vec<String>,
    /// The subscription (default: the profile's).
    #[arg(long)]
    pub subscription: Option<String>,
    #[command(flatten)]
    pub connection: ConnectionOptions,
    #[command(flatten)]
    pub output: OutputOptions,
}

fn absolute(profile: &Profile, url: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_owned()
    } else {
        format!("{}/{}", profile.endpoint, url.trim_start_matches('/'))
    }
}

fn body_argument(body: &str) -> anyhow::Result<Value> {
    let text = match body.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => body.to_owned(),
    };
    serde_json::from_str(&text).context("the body is not valid JSON")
}

/// Sends one request and returns the status and the JSON (or text) body.
pub async fn send(
    profile: &Profile,
    token: &str,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value, reqwest::header::HeaderMap)> {
    let client = http_client(profile)?;
    let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .context("invalid HTTP method")?;
    let mut request = client
        .request(method, absolute(profile, url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.context("sending the request")?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await?;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok((status, value, headers))
}

/// `hds rest`.
pub async fn rest(options: RestOptions) -> anyhow::Result<()> {
    options.output.validate()?;
    let profile = options.connection.resolve()?;
    let (token, _, _) = access_token(&profile, &options.resource).await?;
    let body = options.body.as_deref().map(body_argument).transpose()?;
    let (status, value, _) = send(
        &profile,
        &token,
        &options.method,
        &options.url,
        body.as_ref(),
    )
    .await?;
    if !value.is_null() {
        options.output.print(&value)?;
    }
    if status >= 400 {
        bail!("the request failed with status {status}");
    }
    Ok(())
}

/// Parameters from `NAME=VALUE` pairs and `@FILE` parameter files, in ARM's `{"p":{"value":...}}` form.
fn parameters(arguments: &[String]) -> anyhow::Result<Value> {
    let mut parameters = BTreeMap::new();
    for argument in arguments {
        if let Some(path) = argument.strip_prefix('@') {
            let file: Value = serde_json::from_str(
                &std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
            )
            .with_context(|| format!("{path} is not JSON"))?;
            let inner = file.get("parameters").cloned().unwrap_or(file);
            if let Value::Object(map) = inner {
                parameters.extend(map);
            }
        } else if let Some((name, value)) = argument.split_once('=') {
            let value = serde_json::from_str::<Value>(value)
                .ok()
                .filter(|parsed| {
                    parsed.is_object()
                        || parsed.is_array()
                        || parsed.is_boolean()
                        || parsed.is_number()
                })
                .unwrap_or_else(|| Value::String(value.to_owned()));
            parameters.insert(name.to_owned(), json!({ "value": value }));
        } else {
            bail!("parameter {argument} is neither NAME=VALUE nor @FILE");
        }
    }
    Ok(Value::Object(parameters.into_iter().collect()))
}

/// `hds deployment group create`: PUT the deployment, then poll until it ends.
pub async fn deployment_group_create(options: DeploymentCreateOptions) -> anyhow::Result<()> {
    options.output.validate()?;
    let profile = options.connection.resolve()?;
    let subscription = options
        .subscription
        .clone()
        .or_else(|| profile.subscription_id.clone())
        .context("no subscription: pass --subscription")?;
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(&options.template_file)
            .with_context(|| format!("reading {}", options.template_file.display()))?,
    )
    .context("the template is not JSON")?;
    let name = options.name.clone().unwrap_or_else(|| {
        options
            .template_file
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "deployment".into())
    });
    let path = format!(
        "/subscriptions/{subscription}/resourcegroups/{}/providers/Microsoft.Resources/deployments/{name}?api-version={DEPLOYMENTS_API_VERSION}",
        options.resource_group
    );
    let body = json!({ "properties": { "mode": "Incremental", "template": template, "parameters": parameters(&options.parameters)? } });
    let (token, _, _) = access_token(&profile, MANAGEMENT).await?;
    let (status, value, _) = send(&profile, &token, "PUT", &path, Some(&body)).await?;
    if status >= 400 {
        println!("{}", serde_json::to_string_pretty(&value)?);
        bail!("the deployment was refused with status {status}");
    }
    eprint!("Running ..");
    for _ in 0..600 {
        let (status, value, _) = send(&profile, &token, "GET", &path, None).await?;
        let state = value
            .pointer("/properties/provisioningState")
            .and_then(Value::as_str)
            .unwrap_or("");
        if status >= 400 || matches!(state, "Succeeded" | "Failed" | "Canceled") {
            eprintln!();
            options.output.print(&value)?;
            if state != "Succeeded" {
                bail!("the deployment ended {state}");
            }
            return Ok(());
        }
        eprint!(".");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("the deployment did not finish within 5 minutes")
}
