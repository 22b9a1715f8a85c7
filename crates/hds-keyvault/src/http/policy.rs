//! Key rotation policies (`GET/PUT /keys/{name}/rotationpolicy`) in Key Vault's shape, and
//! random bytes (`POST /rng`). A policy body is read into the domain's
//! [`RotationPolicy`] and validated there; every refusal names the field to change.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::wire::KvJson;
use super::{DataPlaneState, Handled, RequestContext};
use crate::access::DataPlaneAction;
use crate::error::VaultError;
use crate::model::KeyPermission;
use crate::rotation::{
    IsoDuration, LifetimeAction, RotationAction, RotationPolicy, RotationTrigger,
    StoredRotationPolicy,
};

/// Most random bytes one `/rng` call returns (Key Vault's limit).
const MAX_RANDOM_BYTES: u64 = 128;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PolicyBody {
    lifetime_actions: Option<Vec<ActionBody>>,
    attributes: Option<PolicyAttributesBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionBody {
    trigger: Option<TriggerBody>,
    action: Option<ActionTypeBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TriggerBody {
    time_after_create: Option<String>,
    time_before_expiry: Option<String>,
}

#[derive(Deserialize)]
struct ActionTypeBody {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyAttributesBody {
    expiry_time: Option<String>,
}

impl PolicyBody {
    fn policy(self) -> Result<RotationPolicy, VaultError> {
        let actions = self.lifetime_actions.unwrap_or_default();
        if actions.len() > 2 {
            return Err(VaultError::BadParameter(format!(
                "a rotation policy may have at most 2 lifetime actions (one Rotate, one Notify); got {}",
                actions.len()
            )));
        }
        let lifetime_actions = actions
            .into_iter()
            .map(ActionBody::action)
            .collect::<Result<_, _>>()?;
        let expiry_time = self
            .attributes
            .and_then(|attributes| attributes.expiry_time)
            .map(|text| IsoDuration::parse("attributes.expiryTime", &text))
            .transpose()?;
        Ok(RotationPolicy {
            lifetime_actions,
            expiry_time,
        })
    }
}

impl ActionBody {
    fn action(self) -> Result<LifetimeAction, VaultError> {
        let kind = self.action.and_then(|action| action.kind).ok_or_else(|| {
            VaultError::BadParameter(
                "each lifetime action needs action.type: Rotate or Notify".into(),
            )
        })?;
        let trigger = self.trigger.ok_or_else(|| {
            VaultError::BadParameter(
                "each lifetime action needs a trigger: timeAfterCreate or timeBeforeExpiry".into(),
            )
        })?;
        let trigger = match (trigger.time_after_create, trigger.time_before_expiry) {
            (Some(after), None) => {
                RotationTrigger::AfterCreate(IsoDuration::parse("trigger.timeAfterCreate", &after)?)
            }
            (None, Some(before)) => RotationTrigger::BeforeExpiry(IsoDuration::parse(
                "trigger.timeBeforeExpiry",
                &before,
            )?),
            _ => {
                return Err(VaultError::BadParameter(
                    "a trigger needs exactly one of timeAfterCreate and timeBeforeExpiry".into(),
                ));
            }
        };
        Ok(LifetimeAction {
            trigger,
            action: RotationAction::parse(&kind)?,
        })
    }
}

fn policy_json(context: &RequestContext, name: &str, stored: &StoredRotationPolicy) -> Value {
    let mut policy = stored.to_json(RotationAction::as_str);
    policy["id"] = json!(format!(
        "{}keys/{name}/rotationpolicy",
        context.vault.vault_uri
    ));
    policy
}

pub(super) async fn get_rotation_policy(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::GetRotationPolicy),
            Some(&name),
        )
        .await?;
    let stored = state
        .service
        .get_rotation_policy(&context.vault, &name)
        .await?;
    Ok(Json(policy_json(&context, &name, &stored)).into_response())
}

pub(super) async fn set_rotation_policy(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
    KvJson(body): KvJson<PolicyBody>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::SetRotationPolicy),
            Some(&name),
        )
        .await?;
    let stored = state
        .service
        .set_rotation_policy(&context.vault, &name, body.policy()?)
        .await?;
    Ok(Json(policy_json(&context, &name, &stored)).into_response())
}

#[derive(Deserialize)]
pub(super) struct RandomBody {
    count: Option<u64>,
}

/// `getRandomBytes`: 1 to 128 bytes from the system's CSPRNG. It reveals nothing of the vault,
/// so any caller the gate admitted (authenticated, of the vault's tenant, through the
/// firewall) may ask; Key Vault defines no data action for it on vaults.
pub(super) async fn random_bytes(KvJson(body): KvJson<RandomBody>) -> Handled {
    let count = body
        .count
        .filter(|count| (1..=MAX_RANDOM_BYTES).contains(count))
        .ok_or_else(|| {
            VaultError::BadParameter(format!("count must be between 1 and {MAX_RANDOM_BYTES}"))
        })?;
    let mut bytes = vec![0u8; usize::try_from(count).unwrap_or(0)];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| VaultError::Internal("the random generator failed".into()))?;
    Ok(Json(json!({"value": URL_SAFE_NO_PAD.encode(&bytes)})).into_response())
}
