//! `hds login` and `hds account get-access-token`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;

use crate::client::credentials::{ConnectionOptions, Profile, http_client, save_profile};
use crate::client::output::OutputOptions;

/// `hds account ...`.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Print an access token for a resource, as `az account get-access-token` does.
    GetAccessToken(GetAccessTokenOptions),
}

/// Options of `hds account get-access-token`.
#[derive(Debug, Args)]
pub struct GetAccessTokenOptions {
    /// The resource (audience), e.g. https://management.azure.com or https://vault.azure.net.
    #[arg(long, default_value = "https://management.azure.com")]
    pub resource: String,
    #[command(flatten)]
    pub connection: ConnectionOptions,
    #[command(flatten)]
    pub output: OutputOptions,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    token_type: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// A fresh token for `resource` with the client-credentials grant.
pub async fn access_token(
    profile: &Profile,
    resource: &str,
) -> anyhow::Result<(String, u64, String)> {
    let client = http_client(profile)?;
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        profile.endpoint, profile.tenant_id
    );
    let scope = format!("{}/.default", resource.trim_end_matches('/'));
    let response = client
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", profile.client_id.as_str()),
            ("client_secret", profile.client_secret.as_str()),
            ("scope", scope.as_str()),
        ])
        .send()
        .await
        .with_context(|| format!("requesting a token from {url}"))?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        let reason = serde_json::from_slice::<OAuthError>(&body)
            .map(|error| {
                format!(
                    "{}: {}",
                    error.error,
                    error.error_description.unwrap_or_default()
                )
            })
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        bail!("the token service refused ({status}): {reason}");
    }
    let token: TokenResponse =
        serde_json::from_slice(&body).context("parsing the token response")?;
    Ok((
        token.access_token,
        token.expires_in,
        token.token_type.unwrap_or_else(|| "Bearer".into()),
    ))
}

/// `hds account get-access-token`.
pub async fn get_access_token(options: GetAccessTokenOptions) -> anyhow::Result<()> {
    options.output.validate()?;
    let profile = options.connection.resolve()?;
    let (token, expires_in, token_type) = access_token(&profile, &options.resource).await?;
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(expires_in as i64);
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second].000000");
    let output = json!({
        "accessToken": token,
        "expiresOn": expires.format(&format)?,
        "expires_on": expires.unix_timestamp(),
        "subscription": profile.subscription_id,
        "tenant": profile.tenant_id,
        "tokenType": token_type,
    });
    options.output.print(&output)
}

/// Options of `hds login`.
#[derive(Debug, Args)]
pub struct LoginOptions {
    #[command(flatten)]
    pub connection: ConnectionOptions,
    #[command(flatten)]
    pub output: OutputOptions,
}

/// `hds login`: checks the credentials by getting a token, then saves them as the profile.
pub async fn login(options: LoginOptions) -> anyhow::Result<()> {
    options.output.validate()?;
    let profile = options.connection.resolve()?;
    access_token(&profile, "https://management.azure.com").await?;
    let path = save_profile(&profile)?;
    let summary = json!({
        "endpoint": profile.endpoint,
        "tenantId": profile.tenant_id,
        "user": { "name": profile.client_id, "type": "servicePrincipal" },
        "profile": path,
    });
    options.output.print(&summary)
}
