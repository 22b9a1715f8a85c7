//! `hds dicom delete`.

use anyhow::bail;
use clap::Args;
use serde_json::json;

use super::http::{MAX_JSON_BYTES, read_bounded, refusal};
use super::{ServiceOptions, Target, connect};
use crate::client::output::OutputOptions;

/// Options of `hds dicom delete`.
#[derive(Debug, Args)]
pub struct DeleteOptions {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub service: ServiceOptions,
    #[command(flatten)]
    pub output: OutputOptions,
}

/// `hds dicom delete`: prints what was deleted; a study, series or instance that is not there
/// is an error.
pub async fn run(options: DeleteOptions) -> anyhow::Result<()> {
    let path = options.target.path()?;
    let client = connect(&options.service, &options.output).await?;
    let response = client
        .send(|| client.request(reqwest::Method::DELETE, &path))
        .await?;
    let status = response.status();
    if !status.is_success() {
        let body = read_bounded(response, MAX_JSON_BYTES).await?;
        bail!("deleting {path}: {}", refusal(status, &body));
    }
    options.output.print(&json!({
        "deleted": format!("{}/{path}", client.base()),
    }))
}
