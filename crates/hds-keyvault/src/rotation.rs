//! Key rotation policies as Key Vault defines them (`GET/PUT /keys/{name}/rotationpolicy`):
//! lifetime actions (rotate or notify, triggered a duration after a version's creation or
//! before its expiry) and the expiry given to new versions, with their input rules and the
//! one computation the rotation task needs: when the latest version is due for rotation.
//! Pure values, no I/O, so the rules are tested on their own and the scheduler with a clock.

use serde::{Deserialize, Serialize};

use crate::error::VaultError;
use crate::model::KeyVersion;

/// Seconds in a day.
const DAY: i64 = 86_400;
/// The shortest rotation or notification trigger (Azure's minimum: 7 days).
pub const MIN_TRIGGER_DAYS: i64 = 7;
/// The shortest `expiryTime` (Azure's minimum: 28 days).
pub const MIN_EXPIRY_DAYS: i64 = 28;
/// The longest duration accepted anywhere in a policy (100 years of 365 days).
pub const MAX_DURATION_DAYS: i64 = 36_500;
/// Longest duration text accepted (longer inputs are refused before parsing).
const MAX_DURATION_CHARS: usize = 32;

/// An ISO 8601 duration as policies carry it (`P90D`, `P1Y2M`, `PT48H`), kept as the text the
/// client sent (Key Vault echoes it) and its length in seconds. Years count 365 days and months
/// 30: a policy's trigger may fall a day or two away from the calendar date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsoDuration {
    text: String,
    seconds: i64,
}

impl IsoDuration {
    /// Parses `P[nY][nM][nW][nD][T[nH][nM][nS]]` (case-insensitive), at most
    /// [`MAX_DURATION_DAYS`] long; `field` names it in the error.
    pub fn parse(field: &str, text: &str) -> Result<IsoDuration, VaultError> {
        let invalid = || {
            VaultError::BadParameter(format!(
                "{field} must be an ISO 8601 duration such as P90D, P18M, P2Y or PT48H (at most {MAX_DURATION_DAYS} days)"
            ))
        };
        if text.len() > MAX_DURATION_CHARS || !text.is_ascii() {
            return Err(invalid());
        }
        let upper = text.to_ascii_uppercase();
        let rest = upper.strip_prefix('P').ok_or_else(invalid)?;
        let mut seconds: i64 = 0;
        let mut in_time = false;
        let mut number = String::new();
        let mut components = 0;
        // Units must come in order: date units, then (after T) time units.
        let mut last_rank = 0;
        for character in rest.chars() {
            if character.is_ascii_digit() {
                if number.len() >= 6 {
                    return Err(invalid());
                }
                number.push(character);
                continue;
            }
            if character == 'T' {
                if in_time || !number.is_empty() {
                    return Err(invalid());
                }
                in_time = true;
                last_rank = 4;
                continue;
            }
            let (rank, unit) = match (in_time, character) {
                (false, 'Y') => (1, 365 * DAY),
                (false, 'M') => (2, 30 * DAY),
                (false, 'W') => (3, 7 * DAY),
                (false, 'D') => (4, DAY),
                (true, 'H') => (5, 3_600),
                (true, 'M') => (6, 60),
                (true, 'S') => (7, 1),
                _ => return Err(invalid()),
            };
            if rank <= last_rank || number.is_empty() {
                return Err(invalid());
            }
            last_rank = rank;
            let count: i64 = number.parse().map_err(|_| invalid())?;
            number.clear();
            seconds = count
                .checked_mul(unit)
                .and_then(|part| seconds.checked_add(part))
                .ok_or_else(invalid)?;
            components += 1;
        }
        if !number.is_empty() || components == 0 || seconds > MAX_DURATION_DAYS * DAY {
            return Err(invalid());
        }
        Ok(IsoDuration {
            text: upper,
            seconds,
        })
    }

    /// The duration as text (uppercase).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The duration in seconds.
    pub fn seconds(&self) -> i64 {
        self.seconds
    }
}

/// What a lifetime action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationAction {
    /// Create a new version of the key.
    Rotate,
    /// Tell the owner the key is near expiry (recorded; hds has no event grid to send it to).
    Notify,
}

impl RotationAction {
    /// Parses `Rotate` or `Notify` (case-insensitive, as the SDKs' enums are).
    pub fn parse(text: &str) -> Result<RotationAction, VaultError> {
        if text.eq_ignore_ascii_case("rotate") {
            Ok(RotationAction::Rotate)
        } else if text.eq_ignore_ascii_case("notify") {
            Ok(RotationAction::Notify)
        } else {
            Err(VaultError::BadParameter(
                "a lifetime action's type must be Rotate or Notify".into(),
            ))
        }
    }

    /// The name Key Vault writes.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationAction::Rotate => "Rotate",
            RotationAction::Notify => "Notify",
        }
    }
}

/// When a lifetime action fires, relative to the key's latest version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationTrigger {
    /// This long after the version was created (`timeAfterCreate`).
    AfterCreate(IsoDuration),
    /// This long before the version expires (`timeBeforeExpiry`); never for a version without
    /// an expiry.
    BeforeExpiry(IsoDuration),
}

impl RotationTrigger {
    fn duration(&self) -> &IsoDuration {
        match self {
            RotationTrigger::AfterCreate(duration) | RotationTrigger::BeforeExpiry(duration) => {
                duration
            }
        }
    }
}

/// One lifetime action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifetimeAction {
    /// When it fires.
    pub trigger: RotationTrigger,
    /// What it does.
    pub action: RotationAction,
}

/// A key's rotation policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationPolicy {
    /// At most one Rotate and one Notify action.
    pub lifetime_actions: Vec<LifetimeAction>,
    /// The expiry given to each new version (`exp` = its creation + this), when set.
    pub expiry_time: Option<IsoDuration>,
}

impl RotationPolicy {
    /// The policy of a key that never had one set: notify 30 days before expiry (Key Vault's
    /// default), no rotation.
    pub fn default_policy() -> RotationPolicy {
        RotationPolicy {
            lifetime_actions: vec![LifetimeAction {
                trigger: RotationTrigger::BeforeExpiry(IsoDuration {
                    text: "P30D".into(),
                    seconds: 30 * DAY,
                }),
                action: RotationAction::Notify,
            }],
            expiry_time: None,
        }
    }

    /// Applies Key Vault's rules: at most one action of each type, Notify only before expiry,
    /// triggers of at least [`MIN_TRIGGER_DAYS`], `expiryTime` of at least
    /// [`MIN_EXPIRY_DAYS`], and with an `expiryTime`, every trigger at least
    /// [`MIN_TRIGGER_DAYS`] inside it.
    pub fn validate(&self) -> Result<(), VaultError> {
        let bad = |message: String| Err(VaultError::BadParameter(message));
        if self.lifetime_actions.len() > 2 {
            return bad(format!(
                "a rotation policy may have at most 2 lifetime actions (one Rotate, one Notify); got {}",
                self.lifetime_actions.len()
            ));
        }
        for kind in [RotationAction::Rotate, RotationAction::Notify] {
            let count = self
                .lifetime_actions
                .iter()
                .filter(|action| action.action == kind)
                .count();
            if count > 1 {
                return bad(format!(
                    "a rotation policy may have only one {} action",
                    kind.as_str()
                ));
            }
        }
        if let Some(expiry) = &self.expiry_time
            && expiry.seconds() < MIN_EXPIRY_DAYS * DAY
        {
            return bad(format!(
                "attributes.expiryTime must be at least {MIN_EXPIRY_DAYS} days (P{MIN_EXPIRY_DAYS}D)"
            ));
        }
        for action in &self.lifetime_actions {
            if action.action == RotationAction::Notify
                && matches!(action.trigger, RotationTrigger::AfterCreate(_))
            {
                return bad(
                    "a Notify action is triggered by timeBeforeExpiry only, not timeAfterCreate"
                        .into(),
                );
            }
            let duration = action.trigger.duration();
            if duration.seconds() < MIN_TRIGGER_DAYS * DAY {
                return bad(format!(
                    "a lifetime action's trigger must be at least {MIN_TRIGGER_DAYS} days (P{MIN_TRIGGER_DAYS}D); got {}",
                    duration.as_str()
                ));
            }
            if let Some(expiry) = &self.expiry_time
                && duration.seconds() > expiry.seconds() - MIN_TRIGGER_DAYS * DAY
            {
                return bad(format!(
                    "a lifetime action's trigger ({}) must be at least {MIN_TRIGGER_DAYS} days shorter than attributes.expiryTime ({})",
                    duration.as_str(),
                    expiry.as_str()
                ));
            }
        }
        Ok(())
    }

    /// When the Rotate action falls due for `latest` (the key's latest version), if the policy
    /// has one and it can fire: creation + `timeAfterCreate`, or expiry - `timeBeforeExpiry`.
    pub fn rotation_due_at(&self, latest: &KeyVersion) -> Option<i64> {
        let action = self
            .lifetime_actions
            .iter()
            .find(|action| action.action == RotationAction::Rotate)?;
        match &action.trigger {
            RotationTrigger::AfterCreate(duration) => {
                latest.created.checked_add(duration.seconds())
            }
            RotationTrigger::BeforeExpiry(duration) => latest
                .expires
                .and_then(|expires| expires.checked_sub(duration.seconds())),
        }
    }

    /// How long after its creation a version made under this policy expires, in seconds.
    pub fn lifetime(&self) -> Option<i64> {
        self.expiry_time.as_ref().map(IsoDuration::seconds)
    }
}

/// A policy as stored: the policy and when it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRotationPolicy {
    /// The policy.
    pub policy: RotationPolicy,
    /// When it was first set (None for the default policy of a key that has none).
    pub created: Option<i64>,
    /// When it was last set.
    pub updated: Option<i64>,
}

impl StoredRotationPolicy {
    /// `{lifetimeActions, attributes}`, as both the vault's data plane and ARM show a policy;
    /// `action_name` spells an action's type (the vault writes `Rotate`, ARM `rotate`).
    pub fn to_json(
        &self,
        action_name: impl Fn(RotationAction) -> &'static str,
    ) -> serde_json::Value {
        use serde_json::json;
        let actions: Vec<serde_json::Value> = self
            .policy
            .lifetime_actions
            .iter()
            .map(|action| {
                let trigger = match &action.trigger {
                    RotationTrigger::AfterCreate(duration) => {
                        json!({"timeAfterCreate": duration.as_str()})
                    }
                    RotationTrigger::BeforeExpiry(duration) => {
                        json!({"timeBeforeExpiry": duration.as_str()})
                    }
                };
                json!({"trigger": trigger, "action": {"type": action_name(action.action)}})
            })
            .collect();
        let mut attributes = json!({});
        if let Some(expiry) = &self.policy.expiry_time {
            attributes["expiryTime"] = json!(expiry.as_str());
        }
        if let Some(created) = self.created {
            attributes["created"] = json!(created);
        }
        if let Some(updated) = self.updated {
            attributes["updated"] = json!(updated);
        }
        json!({"lifetimeActions": actions, "attributes": attributes})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duration(text: &str) -> IsoDuration {
        IsoDuration::parse("d", text).unwrap()
    }

    fn version(created: i64, expires: Option<i64>) -> KeyVersion {
        KeyVersion {
            name: "k".into(),
            version: "v".into(),
            key_type: crate::model::KeyType::Rsa,
            key_size: 2048,
            key_ops: Vec::new(),
            enabled: true,
            not_before: None,
            expires,
            created,
            updated: created,
            tags: Default::default(),
            modulus: Vec::new(),
            public_exponent: Vec::new(),
        }
    }

    #[test]
    fn durations_parse_in_iso_8601_order() {
        assert_eq!(duration("P90D").seconds(), 90 * DAY);
        assert_eq!(duration("p1y2m").seconds(), (365 + 60) * DAY);
        assert_eq!(duration("P1Y2M").as_str(), "P1Y2M");
        assert_eq!(duration("P2W").seconds(), 14 * DAY);
        assert_eq!(duration("PT48H").seconds(), 2 * DAY);
        assert_eq!(duration("P1DT1H1M1S").seconds(), DAY + 3_661);
    }

    #[test]
    fn hostile_durations_are_refused() {
        for text in [
            "",
            "P",
            "PT",
            "90D",
            "P90",
            "P-1D",
            "P1.5D",
            "P1D1Y",
            "P1DD",
            "P1H",
            "PT1D",
            "P1TD",
            "P9999999D",
            "P101Y",
            "P99999Y99999M",
            "P1D P1D",
            "P١D",
            &"P1D".repeat(20),
        ] {
            let error = IsoDuration::parse("timeAfterCreate", text).unwrap_err();
            assert!(
                error.to_string().contains("timeAfterCreate"),
                "{text}: {error}"
            );
        }
    }

    fn policy(
        actions: &[(RotationTrigger, RotationAction)],
        expiry: Option<&str>,
    ) -> RotationPolicy {
        RotationPolicy {
            lifetime_actions: actions
                .iter()
                .map(|(trigger, action)| LifetimeAction {
                    trigger: trigger.clone(),
                    action: *action,
                })
                .collect(),
            expiry_time: expiry.map(duration),
        }
    }

    #[test]
    fn policies_follow_key_vaults_rules() {
        let rotate = |text| {
            (
                RotationTrigger::AfterCreate(duration(text)),
                RotationAction::Rotate,
            )
        };
        let notify = |text| {
            (
                RotationTrigger::BeforeExpiry(duration(text)),
                RotationAction::Notify,
            )
        };
        assert!(
            policy(&[rotate("P90D"), notify("P30D")], Some("P2Y"))
                .validate()
                .is_ok()
        );
        assert!(RotationPolicy::default_policy().validate().is_ok());
        let refusals = [
            (
                policy(&[rotate("P90D"), rotate("P80D")], None),
                "only one Rotate",
            ),
            (
                policy(&[rotate("P90D"), notify("P30D"), notify("P20D")], None),
                "at most 2",
            ),
            (policy(&[rotate("P6D")], None), "at least 7 days"),
            (policy(&[rotate("P30D")], Some("P27D")), "at least 28 days"),
            (policy(&[rotate("P25D")], Some("P30D")), "shorter than"),
            (
                policy(
                    &[(
                        RotationTrigger::AfterCreate(duration("P30D")),
                        RotationAction::Notify,
                    )],
                    None,
                ),
                "timeBeforeExpiry only",
            ),
        ];
        for (policy, fragment) in refusals {
            let error = policy.validate().unwrap_err().to_string();
            assert!(error.contains(fragment), "{error}");
        }
    }

    #[test]
    fn rotation_falls_due_after_creation_or_before_expiry() {
        let after = policy(
            &[(
                RotationTrigger::AfterCreate(duration("P30D")),
                RotationAction::Rotate,
            )],
            None,
        );
        assert_eq!(
            after.rotation_due_at(&version(1_000, None)),
            Some(1_000 + 30 * DAY)
        );
        let before = policy(
            &[(
                RotationTrigger::BeforeExpiry(duration("P7D")),
                RotationAction::Rotate,
            )],
            Some("P90D"),
        );
        assert_eq!(
            before.rotation_due_at(&version(0, Some(20 * DAY))),
            Some(13 * DAY)
        );
        // No expiry: a before-expiry trigger never fires; no Rotate action: nothing is due.
        assert_eq!(before.rotation_due_at(&version(0, None)), None);
        assert_eq!(
            RotationPolicy::default_policy().rotation_due_at(&version(0, Some(DAY))),
            None
        );
        assert_eq!(before.lifetime(), Some(90 * DAY));
        assert_eq!(after.lifetime(), None);
    }
}
