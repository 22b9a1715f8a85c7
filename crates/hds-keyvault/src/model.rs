//! The vault's domain: vaults with their access settings, and versioned keys.
//!
//! These types carry no wire format of their own beyond what the store needs (vault properties
//! are kept as JSON); the HTTP layer ([`crate::http`]) and the future ARM provider convert them
//! to their own JSON by hand.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::VaultError;

/// Smallest soft-delete retention Azure allows.
pub const MIN_RETENTION_DAYS: u32 = 7;
/// Largest (and default) soft-delete retention.
pub const MAX_RETENTION_DAYS: u32 = 90;

/// The settings of a vault, as the control plane sets them (`Microsoft.KeyVault/vaults`
/// `properties`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaultProperties {
    /// The tenant whose tokens the vault accepts.
    pub tenant_id: String,
    /// Whether deleted keys are kept (recoverable) for the retention period.
    pub enable_soft_delete: bool,
    /// Days a deleted key stays recoverable: 7 to 90, fixed once the vault exists.
    pub soft_delete_retention_in_days: u32,
    /// Once true, deleted keys cannot be purged before their retention ends; cannot go back.
    pub enable_purge_protection: bool,
    /// Data-plane access by role assignments (true) or by [`AccessPolicy`] entries (false).
    pub enable_rbac_authorization: bool,
    /// Per-principal key permissions, used when RBAC is off.
    pub access_policies: Vec<AccessPolicy>,
    /// The vault's firewall.
    pub network_acls: NetworkAcls,
}

impl VaultProperties {
    /// Properties with Azure's defaults: soft delete on for 90 days, no purge protection,
    /// RBAC authorization, no firewall.
    pub fn new(tenant_id: impl Into<String>) -> VaultProperties {
        VaultProperties {
            tenant_id: tenant_id.into(),
            enable_soft_delete: true,
            soft_delete_retention_in_days: MAX_RETENTION_DAYS,
            enable_purge_protection: false,
            enable_rbac_authorization: true,
            access_policies: Vec::new(),
            network_acls: NetworkAcls::default(),
        }
    }

    /// The `recoveryLevel` Azure reports on keys of a vault with these settings.
    pub fn recovery_level(&self) -> &'static str {
        let customized = self.soft_delete_retention_in_days < MAX_RETENTION_DAYS;
        match (
            self.enable_soft_delete,
            self.enable_purge_protection,
            customized,
        ) {
            (false, _, _) => "Purgeable",
            (true, true, false) => "Recoverable",
            (true, true, true) => "CustomizedRecoverable",
            (true, false, false) => "Recoverable+Purgeable",
            (true, false, true) => "CustomizedRecoverable+Purgeable",
        }
    }

    /// Checks the values on their own (retention range).
    pub fn validate(&self) -> Result<(), VaultError> {
        if !(MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(&self.soft_delete_retention_in_days)
        {
            return Err(VaultError::BadParameter(format!(
                "softDeleteRetentionInDays must be between {MIN_RETENTION_DAYS} and {MAX_RETENTION_DAYS}; got {}",
                self.soft_delete_retention_in_days
            )));
        }
        if self.tenant_id.trim().is_empty() {
            return Err(VaultError::BadParameter(
                "tenantId must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// Checks an update of an existing vault against Azure's one-way rules.
    pub fn validate_update(&self, current: &VaultProperties) -> Result<(), VaultError> {
        self.validate()?;
        if current.soft_delete_retention_in_days != self.soft_delete_retention_in_days {
            return Err(VaultError::BadParameter(format!(
                "softDeleteRetentionInDays cannot change after the vault is created (it is {}); leave it out or send the current value",
                current.soft_delete_retention_in_days
            )));
        }
        if current.enable_purge_protection && !self.enable_purge_protection {
            return Err(VaultError::BadParameter(
                "enablePurgeProtection cannot be turned off once enabled; send true or leave it out".into(),
            ));
        }
        if current.enable_soft_delete && !self.enable_soft_delete {
            return Err(VaultError::BadParameter(
                "enableSoftDelete cannot be turned off once enabled; send true or leave it out"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One access-policy entry: what a principal may do with keys when RBAC is off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicy {
    /// The principal's tenant.
    pub tenant_id: String,
    /// The principal (user, service principal or managed identity) object id.
    pub object_id: String,
    /// The key permissions granted.
    pub key_permissions: Vec<KeyPermission>,
}

/// A key permission of an access policy; each maps to one RBAC data action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyPermission {
    /// Read a key (latest, a version, or its versions).
    Get,
    /// List keys.
    List,
    /// Create a key or a version of it.
    Create,
    /// Import key material.
    Import,
    /// Change a key version's attributes, operations or tags.
    Update,
    /// Delete a key (soft delete when enabled).
    Delete,
    /// Recover a deleted key.
    Recover,
    /// Back up a key.
    Backup,
    /// Restore a backup.
    Restore,
    /// Purge a deleted key.
    Purge,
    /// Encrypt with a key.
    Encrypt,
    /// Decrypt with a key.
    Decrypt,
    /// Wrap a key with a key.
    WrapKey,
    /// Unwrap a key with a key.
    UnwrapKey,
    /// Sign a digest.
    Sign,
    /// Verify a signature.
    Verify,
    /// Rotate a key (new version).
    Rotate,
    /// Read a key's rotation policy.
    GetRotationPolicy,
    /// Set a key's rotation policy.
    SetRotationPolicy,
    /// Every key permission.
    All,
}

impl KeyPermission {
    /// Every concrete permission (what `All` stands for).
    pub const CONCRETE: [KeyPermission; 19] = [
        KeyPermission::Get,
        KeyPermission::List,
        KeyPermission::Create,
        KeyPermission::Import,
        KeyPermission::Update,
        KeyPermission::Delete,
        KeyPermission::Recover,
        KeyPermission::Backup,
        KeyPermission::Restore,
        KeyPermission::Purge,
        KeyPermission::Encrypt,
        KeyPermission::Decrypt,
        KeyPermission::WrapKey,
        KeyPermission::UnwrapKey,
        KeyPermission::Sign,
        KeyPermission::Verify,
        KeyPermission::Rotate,
        KeyPermission::GetRotationPolicy,
        KeyPermission::SetRotationPolicy,
    ];

    /// The access-policy name of the permission, as Azure spells it.
    pub fn policy_name(self) -> &'static str {
        match self {
            KeyPermission::Get => "get",
            KeyPermission::List => "list",
            KeyPermission::Create => "create",
            KeyPermission::Import => "import",
            KeyPermission::Update => "update",
            KeyPermission::Delete => "delete",
            KeyPermission::Recover => "recover",
            KeyPermission::Backup => "backup",
            KeyPermission::Restore => "restore",
            KeyPermission::Purge => "purge",
            KeyPermission::Encrypt => "encrypt",
            KeyPermission::Decrypt => "decrypt",
            KeyPermission::WrapKey => "wrapKey",
            KeyPermission::UnwrapKey => "unwrapKey",
            KeyPermission::Sign => "sign",
            KeyPermission::Verify => "verify",
            KeyPermission::Rotate => "rotate",
            KeyPermission::GetRotationPolicy => "getrotationpolicy",
            KeyPermission::SetRotationPolicy => "setrotationpolicy",
            KeyPermission::All => "all",
        }
    }

    /// The RBAC data action that grants the same thing.
    pub fn data_action(self) -> &'static str {
        match self {
            KeyPermission::Get | KeyPermission::List => "Microsoft.KeyVault/vaults/keys/read",
            KeyPermission::Create => "Microsoft.KeyVault/vaults/keys/create/action",
            KeyPermission::Import => "Microsoft.KeyVault/vaults/keys/import/action",
            KeyPermission::Update => "Microsoft.KeyVault/vaults/keys/update/action",
            KeyPermission::Delete => "Microsoft.KeyVault/vaults/keys/delete",
            KeyPermission::Recover => "Microsoft.KeyVault/vaults/keys/recover/action",
            KeyPermission::Backup => "Microsoft.KeyVault/vaults/keys/backup/action",
            KeyPermission::Restore => "Microsoft.KeyVault/vaults/keys/restore/action",
            KeyPermission::Purge => "Microsoft.KeyVault/vaults/keys/purge/action",
            KeyPermission::Encrypt => "Microsoft.KeyVault/vaults/keys/encrypt/action",
            KeyPermission::Decrypt => "Microsoft.KeyVault/vaults/keys/decrypt/action",
            KeyPermission::WrapKey => "Microsoft.KeyVault/vaults/keys/wrap/action",
            KeyPermission::UnwrapKey => "Microsoft.KeyVault/vaults/keys/unwrap/action",
            KeyPermission::Sign => "Microsoft.KeyVault/vaults/keys/sign/action",
            KeyPermission::Verify => "Microsoft.KeyVault/vaults/keys/verify/action",
            KeyPermission::Rotate => "Microsoft.KeyVault/vaults/keys/rotate/action",
            KeyPermission::GetRotationPolicy => {
                "Microsoft.KeyVault/vaults/keyrotationpolicies/read"
            }
            KeyPermission::SetRotationPolicy => {
                "Microsoft.KeyVault/vaults/keyrotationpolicies/write"
            }
            KeyPermission::All => "Microsoft.KeyVault/vaults/keys/*",
        }
    }

    /// Whether a policy granting `self` grants `wanted`.
    pub fn grants(self, wanted: KeyPermission) -> bool {
        self == KeyPermission::All || self == wanted
    }
}

/// The firewall's verdict when no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DefaultAction {
    /// Every address may reach the vault.
    #[default]
    Allow,
    /// Only `ipRules` (and trusted services under `AzureServices` bypass) may.
    Deny,
}

/// Who passes the firewall regardless of rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Bypass {
    /// hds's own hosted services (the trusted-service callers) pass.
    #[default]
    AzureServices,
    /// Nobody passes without a rule.
    None,
}

/// The vault's firewall (`networkAcls`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAcls {
    /// What happens to an address no rule matches.
    pub default_action: DefaultAction,
    /// Whether trusted services pass.
    pub bypass: Bypass,
    /// Allowed addresses or CIDR ranges.
    pub ip_rules: Vec<IpRule>,
}

impl NetworkAcls {
    /// Whether a caller at `client` (unknown when `None`) passes.
    pub fn admits(&self, client: Option<IpAddr>, is_trusted_service: bool) -> bool {
        if self.default_action == DefaultAction::Allow {
            return true;
        }
        if is_trusted_service && self.bypass == Bypass::AzureServices {
            return true;
        }
        match client {
            Some(address) => self.ip_rules.iter().any(|rule| rule.contains(address)),
            None => false,
        }
    }
}

/// An address or CIDR range (`203.0.113.7`, `10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRule {
    network: IpAddr,
    prefix_len: u8,
}

impl IpRule {
    /// Whether `address` falls in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(candidate)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(candidate) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(candidate)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(candidate) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpRule {
    type Err = VaultError;

    fn from_str(text: &str) -> Result<IpRule, VaultError> {
        let invalid = || {
            VaultError::BadParameter(format!(
                "ipRules value '{text}' is not an IP address or CIDR range (e.g. 203.0.113.7 or 10.0.0.0/8)"
            ))
        };
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| invalid())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| invalid())?,
            None => max,
        };
        if prefix_len > max {
            return Err(invalid());
        }
        Ok(IpRule {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for IpRule {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.network, self.prefix_len)
    }
}

impl Serialize for IpRule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<IpRule, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A vault as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vault {
    /// The name as created (compared case-insensitively).
    pub name: String,
    /// The ARM resource id (`/subscriptions/.../providers/Microsoft.KeyVault/vaults/{name}`).
    pub resource_id: String,
    /// The settings.
    pub properties: VaultProperties,
    /// The loopback port of its listener (loopback addressing only).
    pub port: Option<u16>,
    /// The data-plane base URL, ending in `/`.
    pub vault_uri: String,
    /// Creation time (Unix seconds).
    pub created: i64,
    /// Last update (Unix seconds).
    pub updated: i64,
}

/// What kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// A software RSA key (exportable in a backup sealed to this hds).
    Rsa,
    /// An "HSM-protected" RSA key. Without a PKCS#11 token it is a software key that is never
    /// exported, not even sealed in a backup.
    RsaHsm,
}

impl KeyType {
    /// The JWK `kty` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa => "RSA",
            KeyType::RsaHsm => "RSA-HSM",
        }
    }

    /// Parses a `kty`; EC and oct keys are refused with what to use instead.
    pub fn parse(text: &str) -> Result<KeyType, VaultError> {
        match text {
            "RSA" => Ok(KeyType::Rsa),
            "RSA-HSM" => Ok(KeyType::RsaHsm),
            other => Err(VaultError::BadParameter(format!(
                "key type (kty) '{other}' is not supported by this vault; use RSA or RSA-HSM"
            ))),
        }
    }

    /// Whether key material may leave the vault in a (sealed) backup.
    pub fn is_exportable(self) -> bool {
        self == KeyType::Rsa
    }
}

/// A JWK key operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyOperation {
    /// `encrypt`
    Encrypt,
    /// `decrypt`
    Decrypt,
    /// `sign`
    Sign,
    /// `verify`
    Verify,
    /// `wrapKey`
    WrapKey,
    /// `unwrapKey`
    UnwrapKey,
}

impl KeyOperation {
    /// Every operation of an RSA key, the default of a new key.
    pub const ALL_RSA: [KeyOperation; 6] = [
        KeyOperation::Encrypt,
        KeyOperation::Decrypt,
        KeyOperation::Sign,
        KeyOperation::Verify,
        KeyOperation::WrapKey,
        KeyOperation::UnwrapKey,
    ];

    /// The JWK spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOperation::Encrypt => "encrypt",
            KeyOperation::Decrypt => "decrypt",
            KeyOperation::Sign => "sign",
            KeyOperation::Verify => "verify",
            KeyOperation::WrapKey => "wrapKey",
            KeyOperation::UnwrapKey => "unwrapKey",
        }
    }

    /// Parses the JWK spelling (`import` and `export` are accepted by Azure but grant nothing
    /// here, so they are refused).
    pub fn parse(text: &str) -> Result<KeyOperation, VaultError> {
        KeyOperation::ALL_RSA
            .into_iter()
            .find(|operation| operation.as_str() == text)
            .ok_or_else(|| {
                VaultError::BadParameter(format!(
                    "key operation '{text}' is not valid; use encrypt, decrypt, sign, verify, wrapKey or unwrapKey"
                ))
            })
    }

    /// The access permission the operation needs.
    pub fn permission(self) -> KeyPermission {
        match self {
            KeyOperation::Encrypt => KeyPermission::Encrypt,
            KeyOperation::Decrypt => KeyPermission::Decrypt,
            KeyOperation::Sign => KeyPermission::Sign,
            KeyOperation::Verify => KeyPermission::Verify,
            KeyOperation::WrapKey => KeyPermission::WrapKey,
            KeyOperation::UnwrapKey => KeyPermission::UnwrapKey,
        }
    }
}

/// Attributes set at creation, import or rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyAttributesInput {
    /// Enabled (default true).
    pub enabled: Option<bool>,
    /// Not valid before (Unix seconds).
    pub not_before: Option<i64>,
    /// Expires (Unix seconds).
    pub expires: Option<i64>,
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateKeyOptions {
    /// RSA or RSA-HSM.
    pub key_type: KeyType,
    /// 2048, 3072 or 4096 (default 2048).
    pub key_size: Option<u32>,
    /// Permitted operations (default: all).
    pub key_ops: Option<Vec<KeyOperation>>,
    /// Attributes.
    pub attributes: KeyAttributesInput,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

impl CreateKeyOptions {
    /// An RSA key of the default size with every operation.
    pub fn rsa(key_type: KeyType) -> CreateKeyOptions {
        CreateKeyOptions {
            key_type,
            key_size: None,
            key_ops: None,
            attributes: KeyAttributesInput::default(),
            tags: BTreeMap::new(),
        }
    }
}

/// An update of one key version (absent fields stay as they are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    /// New operations.
    pub key_ops: Option<Vec<KeyOperation>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New not-before (`Some(None)` clears it).
    pub not_before: Option<Option<i64>>,
    /// New expiry (`Some(None)` clears it).
    pub expires: Option<Option<i64>>,
    /// New tags (replace all).
    pub tags: Option<BTreeMap<String, String>>,
}

/// One version of a key: public part and attributes (never private material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    /// The key's name as created.
    pub name: String,
    /// 32 lowercase hex digits.
    pub version: String,
    /// The kind of key.
    pub key_type: KeyType,
    /// Modulus size in bits.
    pub key_size: u32,
    /// Permitted operations.
    pub key_ops: Vec<KeyOperation>,
    /// Whether the version may be used.
    pub enabled: bool,
    /// Not valid before (Unix seconds).
    pub not_before: Option<i64>,
    /// Expires (Unix seconds).
    pub expires: Option<i64>,
    /// Created (Unix seconds).
    pub created: i64,
    /// Last updated (Unix seconds).
    pub updated: i64,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// RSA modulus, big-endian without leading zeros.
    pub modulus: Vec<u8>,
    /// RSA public exponent, big-endian.
    pub public_exponent: Vec<u8>,
}

impl KeyVersion {
    /// Why the version cannot be used at `now` for `operation`, if it cannot.
    pub fn usability(&self, operation: &str, now: i64) -> Result<(), VaultError> {
        if !self.enabled {
            return Err(VaultError::KeyDisabled {
                operation: operation.to_owned(),
            });
        }
        if let Some(not_before) = self.not_before
            && now < not_before
        {
            return Err(VaultError::KeyNotYetValid {
                operation: operation.to_owned(),
            });
        }
        if let Some(expires) = self.expires
            && now >= expires
        {
            return Err(VaultError::KeyExpired {
                operation: operation.to_owned(),
            });
        }
        Ok(())
    }
}

/// A key version with where it lives: what the data plane and ARM return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundle {
    /// The vault's base URL, ending in `/`.
    pub vault_uri: String,
    /// The version.
    pub key: KeyVersion,
    /// The vault's `recoveryLevel` for its keys.
    pub recovery_level: &'static str,
    /// Days a deleted key stays recoverable (when soft delete is on).
    pub recoverable_days: Option<u32>,
}

impl KeyBundle {
    /// `{vaultUri}keys/{name}` (ARM `keyUri`).
    pub fn key_uri(&self) -> String {
        format!("{}keys/{}", self.vault_uri, self.key.name)
    }

    /// `{vaultUri}keys/{name}/{version}` (the JWK `kid`, ARM `keyUriWithVersion`).
    pub fn key_uri_with_version(&self) -> String {
        format!(
            "{}keys/{}/{}",
            self.vault_uri, self.key.name, self.key.version
        )
    }
}

/// A soft-deleted key: its latest version and when it goes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedKey {
    /// The latest version at deletion.
    pub bundle: KeyBundle,
    /// Deleted (Unix seconds).
    pub deleted_date: i64,
    /// When it is purged automatically (Unix seconds).
    pub scheduled_purge_date: i64,
}

impl DeletedKey {
    /// `{vaultUri}deletedkeys/{name}`.
    pub fn recovery_id(&self) -> String {
        format!(
            "{}deletedkeys/{}",
            self.bundle.vault_uri, self.bundle.key.name
        )
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Opaque continuation token for the next page, if any.
    pub continuation: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_rules_match_addresses_and_ranges() {
        let single: IpRule = "203.0.113.7".parse().unwrap();
        assert!(single.contains("203.0.113.7".parse().unwrap()));
        assert!(!single.contains("203.0.113.8".parse().unwrap()));
        let range: IpRule = "10.0.0.0/8".parse().unwrap();
        assert!(range.contains("10.200.1.1".parse().unwrap()));
        assert!(range.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!range.contains("11.0.0.1".parse().unwrap()));
        let everything: IpRule = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains("198.51.100.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpRule>().is_err());
        assert!("not-an-ip".parse::<IpRule>().is_err());
    }

    #[test]
    fn firewall_denies_unlisted_and_lets_trusted_services_bypass() {
        let acls = NetworkAcls {
            default_action: DefaultAction::Deny,
            bypass: Bypass::AzureServices,
            ip_rules: vec!["192.0.2.0/24".parse().unwrap()],
        };
        let loopback = Some("127.0.0.1".parse().unwrap());
        assert!(!acls.admits(loopback, false));
        assert!(acls.admits(loopback, true));
        assert!(acls.admits(Some("192.0.2.9".parse().unwrap()), false));
        let strict = NetworkAcls {
            bypass: Bypass::None,
            ..acls
        };
        assert!(!strict.admits(loopback, true));
    }

    #[test]
    fn vault_updates_follow_one_way_rules() {
        let mut current = VaultProperties::new("tenant");
        current.enable_purge_protection = true;
        let mut update = current.clone();
        update.enable_purge_protection = false;
        assert!(update.validate_update(&current).is_err());
        let mut update = current.clone();
        update.soft_delete_retention_in_days = 30;
        assert!(update.validate_update(&current).is_err());
        let mut fresh = VaultProperties::new("tenant");
        fresh.soft_delete_retention_in_days = 6;
        assert!(fresh.validate().is_err());
        assert!(current.validate_update(&current).is_ok());
    }
}
