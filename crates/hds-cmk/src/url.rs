//! Key URLs: `https://host[:port]/keys/{name}[/{version}]`, as Key Vault writes them in a
//! key's `kid` and as a DICOM service's `keyEncryptionKeyUrl` names its key.

use std::fmt;

/// Why a key URL was refused. Each message says what a valid URL looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyUrlError {
    /// The URL does not start with `https://`.
    #[error(
        "the key URL must start with https:// (key vaults are reached over HTTPS only), e.g. https://myvault.vault.azure.net/keys/mykey/0123456789abcdef0123456789abcdef"
    )]
    NotHttps,
    /// The host part is empty, malformed, or carries user information.
    #[error("the key URL has no valid host: {0}")]
    InvalidHost(String),
    /// The port is not a number from 1 to 65535.
    #[error("the key URL's port is not a number from 1 to 65535")]
    InvalidPort,
    /// The path is not `/keys/{name}` or `/keys/{name}/{version}`.
    #[error(
        "the key URL's path must be /keys/{{name}} or /keys/{{name}}/{{version}} (the key identifier as the vault shows it), not '{0}'"
    )]
    InvalidPath(String),
    /// The key name breaks Key Vault's naming rule.
    #[error("the key name '{0}' is not valid: use 1 to 127 letters, digits and hyphens")]
    InvalidName(String),
    /// The version is not a run of letters and digits.
    #[error(
        "the key version '{0}' is not valid: a version is the 32 hexadecimal digits the vault assigned"
    )]
    InvalidVersion(String),
    /// The URL names no version where one is needed (to wrap with).
    #[error("the key URL must name a key version here: https://host/keys/{{name}}/{{version}}")]
    VersionRequired,
    /// The URL has a query string or fragment.
    #[error("the key URL must not have a query string or fragment")]
    QueryOrFragment,
}

/// A parsed key URL. The scheme and host are kept in lower case (host names compare
/// case-insensitively) and the default port 443 is dropped, so two spellings of one key
/// compare equal; the name and version are kept as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyUrl {
    /// `host` or `host:port`, lower case, without `:443`.
    authority: String,
    name: String,
    version: Option<String>,
}

/// The longest key name Key Vault accepts.
const MAX_NAME_LEN: usize = 127;
/// The longest version accepted (Azure's are 32 hex digits; hds's too).
const MAX_VERSION_LEN: usize = 64;

impl KeyUrl {
    /// Parses `https://host[:port]/keys/{name}[/{version}]`; one trailing slash is tolerated.
    pub fn parse(text: &str) -> Result<KeyUrl, KeyUrlError> {
        let text = text.trim();
        let rest = strip_prefix_ignore_case(text, "https://").ok_or(KeyUrlError::NotHttps)?;
        if rest.contains('?') || rest.contains('#') {
            return Err(KeyUrlError::QueryOrFragment);
        }
        let (authority, path) = match rest.find('/') {
            Some(index) => rest.split_at(index),
            None => (rest, ""),
        };
        let authority = parse_authority(authority)?;
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut segments = path.split('/');
        // The path starts with '/', so the first segment is empty.
        let leading = segments.next();
        let keys = segments.next();
        let name = segments.next();
        let version = segments.next();
        if leading != Some("") || keys != Some("keys") || segments.next().is_some() {
            return Err(KeyUrlError::InvalidPath(path.to_owned()));
        }
        let name = name.ok_or_else(|| KeyUrlError::InvalidPath(path.to_owned()))?;
        if !is_valid_name(name) {
            return Err(KeyUrlError::InvalidName(name.to_owned()));
        }
        let version = match version {
            Some(version) if is_valid_version(version) => Some(version.to_owned()),
            Some(version) => return Err(KeyUrlError::InvalidVersion(version.to_owned())),
            None => None,
        };
        Ok(KeyUrl {
            authority,
            name: name.to_owned(),
            version,
        })
    }

    /// The vault's base URL, `https://host[:port]/` (with the trailing slash, as Key Vault
    /// writes `vaultUri`).
    pub fn vault_base_url(&self) -> String {
        format!("https://{}/", self.authority)
    }

    /// `host` or `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version, when the URL names one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Whether the URL names a version.
    pub fn is_versioned(&self) -> bool {
        self.version.is_some()
    }

    /// The same key at `version`.
    pub fn with_version(&self, version: &str) -> Result<KeyUrl, KeyUrlError> {
        if !is_valid_version(version) {
            return Err(KeyUrlError::InvalidVersion(version.to_owned()));
        }
        Ok(KeyUrl {
            authority: self.authority.clone(),
            name: self.name.clone(),
            version: Some(version.to_owned()),
        })
    }

    /// The same key without a version (its latest version).
    pub fn versionless(&self) -> KeyUrl {
        KeyUrl {
            authority: self.authority.clone(),
            name: self.name.clone(),
            version: None,
        }
    }

    /// Whether `other` names the same key (vault and name; names compare case-insensitively,
    /// as Key Vault's do), whatever the versions.
    pub fn same_key(&self, other: &KeyUrl) -> bool {
        self.authority == other.authority && self.name.eq_ignore_ascii_case(&other.name)
    }
}

impl fmt::Display for KeyUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "https://{}/keys/{}", self.authority, self.name)?;
        if let Some(version) = &self.version {
            write!(formatter, "/{version}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for KeyUrl {
    type Err = KeyUrlError;

    fn from_str(text: &str) -> Result<KeyUrl, KeyUrlError> {
        KeyUrl::parse(text)
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Validates `host[:port]` (IPv6 literals in brackets) and normalizes it.
fn parse_authority(authority: &str) -> Result<String, KeyUrlError> {
    if authority.is_empty() {
        return Err(KeyUrlError::InvalidHost("the host is empty".into()));
    }
    if authority.contains('@') {
        return Err(KeyUrlError::InvalidHost(
            "user information (user@host) is not allowed".into(),
        ));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (literal, after) = rest
            .split_once(']')
            .ok_or_else(|| KeyUrlError::InvalidHost("unclosed '[' in an IPv6 address".into()))?;
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(KeyUrlError::InvalidHost(
                "the bracketed IPv6 address is not valid".into(),
            ));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| KeyUrlError::InvalidHost("unexpected text after ']'".into()))?,
            ),
        };
        (format!("[{}]", literal.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let host_is_valid = !host.is_empty()
            && host
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.');
        if !host_is_valid {
            return Err(KeyUrlError::InvalidHost(
                "a host name has only letters, digits, hyphens and dots".into(),
            ));
        }
        (host.to_ascii_lowercase(), port)
    };
    match port {
        None => Ok(host),
        Some(port) => {
            let number: u16 = port.parse().map_err(|_| KeyUrlError::InvalidPort)?;
            match number {
                0 => Err(KeyUrlError::InvalidPort),
                443 => Ok(host),
                _ => Ok(format!("{host}:{number}")),
            }
        }
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
}

fn is_valid_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= MAX_VERSION_LEN
        && version.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_a_versioned_azure_url() {
        let url = KeyUrl::parse(&format!(
            "https://myvault.vault.azure.net/keys/cmk/{VERSION}"
        ))
        .unwrap();
        assert_eq!(url.authority(), "myvault.vault.azure.net");
        assert_eq!(url.name(), "cmk");
        assert_eq!(url.version(), Some(VERSION));
        assert_eq!(url.vault_base_url(), "https://myvault.vault.azure.net/");
        assert_eq!(
            url.to_string(),
            format!("https://myvault.vault.azure.net/keys/cmk/{VERSION}")
        );
    }

    #[test]
    fn parses_versionless_urls_with_and_without_a_trailing_slash() {
        for text in [
            "https://127.0.0.1:8500/keys/my-key",
            "https://127.0.0.1:8500/keys/my-key/",
        ] {
            let url = KeyUrl::parse(text).unwrap();
            assert_eq!(url.authority(), "127.0.0.1:8500");
            assert_eq!(url.name(), "my-key");
            assert!(!url.is_versioned());
            assert_eq!(url.to_string(), "https://127.0.0.1:8500/keys/my-key");
        }
        let versioned =
            KeyUrl::parse(&format!("https://127.0.0.1:8500/keys/k/{VERSION}/")).unwrap();
        assert_eq!(versioned.version(), Some(VERSION));
    }

    #[test]
    fn normalizes_scheme_host_and_default_port() {
        let url = KeyUrl::parse("HTTPS://MyVault.Vault.Azure.NET:443/keys/Key1").unwrap();
        assert_eq!(url.to_string(), "https://myvault.vault.azure.net/keys/Key1");
        let other = KeyUrl::parse(&format!(
            "https://myvault.vault.azure.net/keys/key1/{VERSION}"
        ))
        .unwrap();
        assert!(url.same_key(&other));
        assert_ne!(url, other);
        assert_eq!(
            other.versionless(),
            KeyUrl::parse("https://myvault.vault.azure.net/keys/key1").unwrap()
        );
    }

    #[test]
    fn accepts_bracketed_ipv6_hosts() {
        let url = KeyUrl::parse("https://[::1]:9000/keys/k").unwrap();
        assert_eq!(url.vault_base_url(), "https://[::1]:9000/");
    }

    #[test]
    fn refuses_malformed_urls_with_the_reason() {
        let cases: &[(&str, KeyUrlError)] = &[
            ("http://vault/keys/k", KeyUrlError::NotHttps),
            ("vault/keys/k", KeyUrlError::NotHttps),
            (
                "https:///keys/k",
                KeyUrlError::InvalidHost("the host is empty".into()),
            ),
            ("https://vault:0/keys/k", KeyUrlError::InvalidPort),
            ("https://vault:99999/keys/k", KeyUrlError::InvalidPort),
            (
                "https://vault/secrets/k",
                KeyUrlError::InvalidPath("/secrets/k".into()),
            ),
            (
                "https://vault/keys",
                KeyUrlError::InvalidPath("/keys".into()),
            ),
            ("https://vault/", KeyUrlError::InvalidPath("".into())),
            (
                "https://vault/keys/k/v1/extra",
                KeyUrlError::InvalidPath("/keys/k/v1/extra".into()),
            ),
            (
                "https://vault/keys/k?api-version=7.4",
                KeyUrlError::QueryOrFragment,
            ),
            (
                "https://vault/keys/bad_name",
                KeyUrlError::InvalidName("bad_name".into()),
            ),
            (
                "https://vault/keys/k/not-hex!",
                KeyUrlError::InvalidVersion("not-hex!".into()),
            ),
            ("https://vault/keys//", KeyUrlError::InvalidName("".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(KeyUrl::parse(text).as_ref(), Err(expected), "{text}");
        }
        assert!(matches!(
            KeyUrl::parse("https://user@vault/keys/k"),
            Err(KeyUrlError::InvalidHost(_))
        ));
        let message = KeyUrl::parse("http://vault/keys/k")
            .unwrap_err()
            .to_string();
        assert!(message.contains("https://"), "{message}");
    }

    #[test]
    fn with_version_checks_the_version() {
        let url = KeyUrl::parse("https://vault/keys/k").unwrap();
        assert_eq!(url.with_version(VERSION).unwrap().version(), Some(VERSION));
        assert!(url.with_version("a/b").is_err());
    }
}
