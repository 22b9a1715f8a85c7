//! The audit log's producers and readers: access-control decorators that record every key
//! operation on the vaults' data plane and every change of keys and role assignments on the
//! control plane, with the caller's principal id, the action, the resource id and the
//! authorization decision; and `hds audit list` / `hds audit verify`.
//!
//! A record is appended before the decision is returned, and a decision whose record cannot be
//! written is a refusal: nothing audited happens unrecorded.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::http::HeaderMap;
use clap::{Args, Subcommand};
use hds_arm::{ArmAccessControl, ArmError, ArmFuture, Caller as ArmCaller, ResourceId};
use hds_audit::{AuditEvent, AuditFilter, AuditLog, Verification};
use hds_db::Database;
use hds_keyvault::access::{AccessError, BoxFuture, Caller as VaultCaller, VaultAccessControl};

/// Whether a vault data action is audited: every key operation except reading a key.
fn audited_vault_action(data_action: &str) -> bool {
    data_action.starts_with("Microsoft.KeyVault/vaults/keys/") && !data_action.ends_with("/read")
}

/// Whether a control-plane action is audited: role assignments and keys, written or deleted.
fn audited_arm_action(action: &str) -> bool {
    let lower = action.to_ascii_lowercase();
    (lower.starts_with("microsoft.authorization/roleassignments/")
        || lower.starts_with("microsoft.keyvault/vaults/keys/"))
        && !lower.ends_with("/read")
}

fn outcome(allowed: bool) -> String {
    if allowed { "allowed" } else { "denied" }.to_owned()
}

/// A vault access control that records the key operations `inner` decides on.
pub struct AuditedVaultAccess<A> {
    pub inner: A,
    pub audit: AuditLog,
}

impl<A: VaultAccessControl> VaultAccessControl for AuditedVaultAccess<A> {
    fn authenticate<'a>(
        &'a self,
        bearer: &'a str,
    ) -> BoxFuture<'a, Result<VaultCaller, AccessError>> {
        self.inner.authenticate(bearer)
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a VaultCaller,
        data_action: &'a str,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async move {
            let decision = self.inner.authorize(caller, data_action, scope).await;
            if !audited_vault_action(data_action) {
                return decision;
            }
            let allowed = match &decision {
                Ok(()) => true,
                Err(AccessError::Denied) => false,
                // No decision was made (the identity service failed): nothing to record.
                Err(_) => return decision,
            };
            let event = AuditEvent {
                principal_id: caller.principal_id.clone(),
                operation: data_action.to_owned(),
                resource_id: scope.to_owned(),
                outcome: outcome(allowed),
            };
            if let Err(error) = self.audit.append(&event).await {
                tracing::error!(%error, "an audit record could not be written; refusing");
                return Err(AccessError::Unavailable(
                    "the audit log is unavailable".to_owned(),
                ));
            }
            decision
        })
    }
}

/// A control-plane access control that records changes of role assignments and keys.
pub struct AuditedArmAccess {
    pub inner: Arc<dyn ArmAccessControl>,
    pub audit: AuditLog,
}

impl ArmAccessControl for AuditedArmAccess {
    fn authenticate<'a>(&'a self, headers: &'a HeaderMap) -> ArmFuture<'a, ArmCaller> {
        self.inner.authenticate(headers)
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a ArmCaller,
        action: &'a str,
        scope: &'a ResourceId,
    ) -> ArmFuture<'a, ()> {
        Box::pin(async move {
            let decision = self.inner.authorize(caller, action, scope).await;
            if !audited_arm_action(action) {
                return decision;
            }
            let allowed = match &decision {
                Ok(()) => true,
                Err(error) if error.status() == axum::http::StatusCode::FORBIDDEN => false,
                Err(_) => return decision,
            };
            let event = AuditEvent {
                principal_id: caller.principal_id.clone(),
                operation: action.to_owned(),
                resource_id: scope.to_string(),
                outcome: outcome(allowed),
            };
            if let Err(error) = self.audit.append(&event).await {
                return Err(ArmError::internal(&format!(
                    "an audit record could not be written; refusing: {error}"
                )));
            }
            decision
        })
    }
}

/// `hds audit ...`: read and check the audit log of a data dir.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print audit records (JSON lines, the oldest first).
    List(AuditListOptions),
    /// Recompute the chain; exit 1 if a record was changed, inserted or removed.
    Verify(AuditDataOptions),
}

/// Where the audit log is.
#[derive(Debug, Args)]
pub struct AuditDataOptions {
    /// The data dir of the hds whose log to read.
    #[arg(long, env = "HDS_DATA_DIR", default_value_os_t = crate::cli::default_data_dir())]
    pub data_dir: PathBuf,

    /// The index `hds up` runs with: `sqlite` (the data dir's `index.db`) or a PostgreSQL URL.
    #[arg(long, env = "HDS_INDEX", default_value = "sqlite")]
    pub index: String,

    /// How the data dir keeps its root key: the flags `hds up` runs with.
    #[command(flatten)]
    pub root_key: crate::root_key::RootKeyOptions,
}

/// Options of `hds audit list`.
#[derive(Debug, Args)]
pub struct AuditListOptions {
    #[command(flatten)]
    pub data: AuditDataOptions,

    /// Only records of this principal id.
    #[arg(long)]
    pub principal: Option<String>,

    /// Only this operation, e.g. Microsoft.KeyVault/vaults/keys/wrap/action.
    #[arg(long)]
    pub operation: Option<String>,

    /// Only this resource id and those under it.
    #[arg(long)]
    pub resource: Option<String>,

    /// Only records of the last DURATION (e.g. 1h, 30m).
    #[arg(long, value_parser = crate::cli::parse_duration)]
    pub since: Option<std::time::Duration>,

    /// At most this many records.
    #[arg(long)]
    pub limit: Option<u32>,
}

async fn open(options: &AuditDataOptions) -> anyhow::Result<AuditLog> {
    let root_key = crate::root_key::open_existing(&options.data_dir, &options.root_key)?;
    let url = match options.index.as_str() {
        "sqlite" => format!("sqlite:{}", options.data_dir.join("index.db").display()),
        url => url.to_owned(),
    };
    let database = Database::connect(&url)
        .await
        .context("opening the database")?;
    AuditLog::open(database, &root_key)
        .await
        .context("opening the audit log")
}

pub async fn list(options: AuditListOptions) -> anyhow::Result<()> {
    let audit = open(&options.data).await?;
    let since_ms = options.since.map(|since| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let since = i128::try_from(since.as_millis()).unwrap_or(i128::MAX);
        i64::try_from(now.saturating_sub(since)).unwrap_or(0)
    });
    let records = audit
        .list(&AuditFilter {
            principal_id: options.principal,
            operation: options.operation,
            resource_id: options.resource,
            since_ms,
            limit: options.limit,
        })
        .await?;
    for record in records {
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(record.recorded_ms) * 1_000_000,
        )
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
        let line = serde_json::json!({
            "sequence": record.sequence,
            "time": time,
            "principalId": record.event.principal_id,
            "operation": record.event.operation,
            "resourceId": record.event.resource_id,
            "outcome": record.event.outcome,
        });
        println!("{line}");
    }
    Ok(())
}

pub async fn verify(options: AuditDataOptions) -> anyhow::Result<()> {
    let audit = open(&options).await?;
    match audit.verify().await? {
        Verification::Intact { records } => {
            println!("the audit log is intact: {records} records");
            Ok(())
        }
        Verification::Broken { sequence, reason } => {
            anyhow::bail!("the audit log is broken at record {sequence}: {reason}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_operations_and_role_changes_are_audited_reads_are_not() {
        assert!(audited_vault_action(
            "Microsoft.KeyVault/vaults/keys/wrap/action"
        ));
        assert!(audited_vault_action(
            "Microsoft.KeyVault/vaults/keys/rotate/action"
        ));
        assert!(!audited_vault_action("Microsoft.KeyVault/vaults/keys/read"));
        assert!(audited_arm_action(
            "Microsoft.Authorization/roleAssignments/write"
        ));
        assert!(audited_arm_action(
            "Microsoft.Authorization/roleAssignments/delete"
        ));
        assert!(!audited_arm_action(
            "Microsoft.Authorization/roleAssignments/read"
        ));
        assert!(!audited_arm_action(
            "Microsoft.HealthcareApis/workspaces/write"
        ));
    }
}
