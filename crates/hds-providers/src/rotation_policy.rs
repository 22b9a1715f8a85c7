//! A key's rotation policy through the control plane: `properties.rotationPolicy` of
//! `Microsoft.KeyVault/vaults/keys`, in the shape Azure's ARM API gives it
//! (`lifetimeActions` of `{trigger: {timeAfterCreate | timeBeforeExpiry}, action: {type:
//! rotate | notify}}`, `attributes.expiryTime`, ISO 8601 durations).
//!
//! A key's GET shows the policy (the vault's default, notify 30 days before expiry, for a key
//! that never had one set). A PUT or PATCH of the key that carries a different policy sets it on
//! the vault, and like the other key writes of this control plane (`crate::key_versions`) it
//! needs the vault's data-plane permission (`vaults/keyrotationpolicies/write`, or the access policy's
//! `setrotationpolicy`) on top of the ARM one; a PUT that repeats the current policy (a template
//! deployed again, a PATCH of something else) changes nothing and needs nothing more.
//!
//! The body is read strictly: unknown names, wrong types, more than two actions, durations that
//! are not ISO 8601 or out of the vault's bounds are refused with 400 `InvalidRotationPolicy`
//! naming the field, before anything is written.

use hds_arm::ArmError;
use hds_keyvault::VaultError;
use hds_keyvault::rotation::{
    IsoDuration, LifetimeAction, RotationAction, RotationPolicy, RotationTrigger,
    StoredRotationPolicy,
};
use serde_json::{Map, Value};

use crate::errors::bad_request;

/// The error code of every refused policy.
const INVALID: &str = "InvalidRotationPolicy";

/// The most lifetime actions a policy holds (one Rotate, one Notify).
const MAX_ACTIONS: usize = 2;

fn invalid(message: impl Into<String>) -> ArmError {
    bad_request(INVALID, message)
}

/// The object at `path`, whose names must all be in `allowed` (any case, as ARM matches them).
fn object<'v>(
    value: &'v Value,
    path: &str,
    allowed: &[&str],
) -> Result<&'v Map<String, Value>, ArmError> {
    let Value::Object(map) = value else {
        return Err(invalid(format!("'{path}' must be a JSON object.")));
    };
    if let Some(name) = map
        .keys()
        .find(|name| !allowed.iter().any(|known| known.eq_ignore_ascii_case(name)))
    {
        let known = allowed.join("', '");
        return Err(invalid(format!(
            "'{path}.{}' is not a rotation policy property; '{path}' takes '{known}'.",
            name.chars().take(64).collect::<String>()
        )));
    }
    Ok(map)
}

/// The non-null value of `name` in `map`, any case.
fn member<'v>(map: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    map.iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
        .filter(|value| !value.is_null())
}

/// The duration at `path`, a string such as `P90D`.
fn duration(value: &Value, path: &str) -> Result<IsoDuration, ArmError> {
    let Value::String(text) = value else {
        return Err(invalid(format!(
            "'{path}' must be an ISO 8601 duration string such as P90D."
        )));
    };
    IsoDuration::parse(path, text).map_err(vault_refusal)
}

fn vault_refusal(error: VaultError) -> ArmError {
    match error {
        VaultError::BadParameter(message) => invalid(message),
        other => crate::errors::from_vault(other),
    }
}

/// Reads `properties.rotationPolicy` and applies the vault's rules to it.
pub(crate) fn parse(value: &Value) -> Result<RotationPolicy, ArmError> {
    const ROOT: &str = "properties.rotationPolicy";
    let map = object(value, ROOT, &["lifetimeActions", "attributes"])?;
    let lifetime_actions = match member(map, "lifetimeActions") {
        None => Vec::new(),
        Some(Value::Array(actions)) if actions.len() > MAX_ACTIONS => {
            return Err(invalid(format!(
                "'{ROOT}.lifetimeActions' may hold at most {MAX_ACTIONS} actions (one rotate, one notify); it holds {}.",
                actions.len()
            )));
        }
        Some(Value::Array(actions)) => actions
            .iter()
            .enumerate()
            .map(|(index, action)| {
                parse_action(action, &format!("{ROOT}.lifetimeActions[{index}]"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid(format!(
                "'{ROOT}.lifetimeActions' must be an array."
            )));
        }
    };
    let expiry_time = match member(map, "attributes") {
        None => None,
        Some(attributes) => {
            let path = format!("{ROOT}.attributes");
            // `created` and `updated` are what a GET shows; a PATCH sends them back.
            let attributes = object(attributes, &path, &["expiryTime", "created", "updated"])?;
            member(attributes, "expiryTime")
                .map(|value| duration(value, &format!("{path}.expiryTime")))
                .transpose()?
        }
    };
    let policy = RotationPolicy {
        lifetime_actions,
        expiry_time,
    };
    policy.validate().map_err(vault_refusal)?;
    Ok(policy)
}

fn parse_action(value: &Value, path: &str) -> Result<LifetimeAction, ArmError> {
    let map = object(value, path, &["trigger", "action"])?;
    let action = member(map, "action").ok_or_else(|| {
        invalid(format!(
            "'{path}.action' is required: {{\"type\": \"rotate\"}} or {{\"type\": \"notify\"}}."
        ))
    })?;
    let action = object(action, &format!("{path}.action"), &["type"])?;
    let action = match member(action, "type") {
        Some(Value::String(kind)) => RotationAction::parse(kind)
            .map_err(|_| invalid(format!("'{path}.action.type' must be rotate or notify.")))?,
        _ => {
            return Err(invalid(format!(
                "'{path}.action.type' is required: rotate or notify."
            )));
        }
    };
    let trigger = member(map, "trigger").ok_or_else(|| {
        invalid(format!(
            "'{path}.trigger' is required: timeAfterCreate or timeBeforeExpiry."
        ))
    })?;
    let trigger_path = format!("{path}.trigger");
    let trigger = object(
        trigger,
        &trigger_path,
        &["timeAfterCreate", "timeBeforeExpiry"],
    )?;
    let trigger = match (
        member(trigger, "timeAfterCreate"),
        member(trigger, "timeBeforeExpiry"),
    ) {
        (Some(after), None) => RotationTrigger::AfterCreate(duration(
            after,
            &format!("{trigger_path}.timeAfterCreate"),
        )?),
        (None, Some(before)) => RotationTrigger::BeforeExpiry(duration(
            before,
            &format!("{trigger_path}.timeBeforeExpiry"),
        )?),
        _ => {
            return Err(invalid(format!(
                "'{trigger_path}' needs exactly one of timeAfterCreate and timeBeforeExpiry."
            )));
        }
    };
    Ok(LifetimeAction { trigger, action })
}

/// Whether two policies say the same, whatever the order of their actions.
pub(crate) fn same(left: &RotationPolicy, right: &RotationPolicy) -> bool {
    let sorted = |policy: &RotationPolicy| {
        let mut actions = policy.lifetime_actions.clone();
        actions.sort_by_key(|action| action.action.as_str());
        actions
    };
    left.expiry_time == right.expiry_time && sorted(left) == sorted(right)
}

/// The policy as ARM shows it under a key's `properties.rotationPolicy` (action types in
/// lowercase, as ARM spells them).
pub(crate) fn to_json(stored: &StoredRotationPolicy) -> Value {
    stored.to_json(|action| match action {
        RotationAction::Rotate => "rotate",
        RotationAction::Notify => "notify",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(body: Value) -> String {
        let error = parse(&body).expect_err("refused");
        assert_eq!(error.status(), http::StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error.code(), INVALID, "{body}");
        error.message().to_owned()
    }

    #[test]
    fn policies_read_in_arms_shape_and_round_trip() {
        let policy = parse(&json!({
            "lifetimeActions": [
                {"trigger": {"timeAfterCreate": "p90d"}, "action": {"type": "Rotate"}},
                {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "notify"}}
            ],
            "attributes": {"expiryTime": "P2Y", "created": 1, "updated": 2}
        }))
        .expect("valid");
        let stored = StoredRotationPolicy {
            policy: policy.clone(),
            created: Some(5),
            updated: Some(6),
        };
        let shown = to_json(&stored);
        assert_eq!(
            shown["lifetimeActions"][0],
            json!({"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "rotate"}})
        );
        assert_eq!(shown["attributes"]["expiryTime"], "P2Y");
        assert_eq!(shown["attributes"]["created"], 5);
        let again = parse(&shown).expect("what GET shows is accepted back");
        assert!(same(&again, &policy));
        let mut reversed = policy.clone();
        reversed.lifetime_actions.reverse();
        assert!(same(&reversed, &policy));
        assert!(!same(&RotationPolicy::default_policy(), &policy));
        assert!(
            parse(&json!({}))
                .expect("empty")
                .lifetime_actions
                .is_empty(),
            "no actions: never rotated, never notified"
        );
    }

    #[test]
    fn hostile_policies_are_refused_naming_the_field() {
        let rotate = |trigger: Value| json!({"lifetimeActions": [{"trigger": trigger, "action": {"type": "rotate"}}]});
        let cases = [
            (json!([1]), "must be a JSON object"),
            (json!("P90D"), "must be a JSON object"),
            (json!({"lifetimeActions": {}}), "must be an array"),
            (json!({"lifetimeActions": [1]}), "lifetimeActions[0]"),
            (json!({"extra": 1}), "properties.rotationPolicy.extra"),
            (json!({"lifetimeActions": [{}, {}, {}]}), "at most 2"),
            (
                json!({"lifetimeActions": vec![json!({}); 100_000]}),
                "at most 2",
            ),
            (rotate(json!({"timeAfterCreate": 90})), "duration string"),
            (
                rotate(json!({"timeAfterCreate": "90 days"})),
                "timeAfterCreate",
            ),
            (rotate(json!({"timeAfterCreate": "P1D"})), "at least 7 days"),
            (
                rotate(json!({"timeAfterCreate": "P9999999D"})),
                "timeAfterCreate",
            ),
            (
                rotate(json!({"timeAfterCreate": "P1D".repeat(10_000)})),
                "timeAfterCreate",
            ),
            (
                rotate(json!({"timeAfterCreate": "P1Y\u{0}"})),
                "timeAfterCreate",
            ),
            (rotate(json!({})), "exactly one"),
            (
                rotate(json!({"timeAfterCreate": "P90D", "timeBeforeExpiry": "P30D"})),
                "exactly one",
            ),
            (
                rotate(json!({"timeAfterCreate": "P90D", "at": "now"})),
                "trigger.at",
            ),
            (
                json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "explode"}}]}),
                "rotate or notify",
            ),
            (
                json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}}]}),
                "action",
            ),
            (
                json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "notify"}}]}),
                "timeBeforeExpiry only",
            ),
            (
                json!({"lifetimeActions": [
                    {"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "rotate"}},
                    {"trigger": {"timeAfterCreate": "P80D"}, "action": {"type": "rotate"}}
                ]}),
                "only one Rotate",
            ),
            (
                json!({"attributes": {"expiryTime": "P1D"}}),
                "at least 28 days",
            ),
            (json!({"attributes": {"expiryTime": true}}), "expiryTime"),
            (
                json!({"attributes": {"expires": "P1Y"}}),
                "attributes.expires",
            ),
            (
                json!({
                    "lifetimeActions": [{"trigger": {"timeAfterCreate": "P1Y"}, "action": {"type": "rotate"}}],
                    "attributes": {"expiryTime": "P1Y"}
                }),
                "shorter than attributes.expiryTime",
            ),
        ];
        for (body, expected) in cases {
            let message = refused(body.clone());
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
            assert!(message.len() < 400, "a bounded message: {message}");
        }
    }
}
