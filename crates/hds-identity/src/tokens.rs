//! Access tokens: issuing them to principals and validating them at every endpoint.
//!
//! Validation, in order: refuse a token longer than [`MAX_TOKEN_BYTES`]; parse the compact
//! JWS; pick the trusted issuer named by `iss` (the platform's own `{base}/{tenant}/v2.0`, or a
//! configured external one) and, among its keys, the one named by `kid`; check that the
//! header's `alg` is that key's algorithm and that the signature verifies; then `exp`
//! (required), `nbf` (five minutes of clock skew, as Microsoft's libraries allow), a lifetime of
//! at most [`MAX_TOKEN_LIFETIME_SECONDS`], identity claims of at most [`MAX_CLAIM_BYTES`], `aud`
//! (ignoring one trailing slash), and, for platform tokens, that the principal still exists in
//! the tenant the token names.
//!
//! An external issuer's principals live in a namespace of their own: their principal id is
//! [`external_principal_id`] of (issuer, tenant, subject), a name-based (version 5) GUID, so
//! no claim an external issuer signs can name a local principal or managed identity (whose ids
//! are random, version 4 GUIDs).

use serde::{Deserialize, Serialize};

use crate::applications::SecretCheck;
use crate::auth::AuthenticatedPrincipal;
use crate::jws::{JwkSet, UnverifiedJws, VerifyingKey};
use crate::principals::{Principal, PrincipalKind};
use crate::{Identity, IdentityError, TokenError, new_guid, now_unix};

/// How long an issued token is valid.
pub const TOKEN_LIFETIME_SECONDS: i64 = 3600;

/// Clock skew tolerated on `exp` and `nbf`.
pub(crate) const CLOCK_SKEW_SECONDS: i64 = 300;

/// The longest bearer token accepted, in bytes. Entra ID's tokens stay well below (past about
/// 200 groups it sends a link instead of the list); anything longer is refused before it is
/// decoded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The longest lifetime accepted (`exp` minus `nbf`, else `iat`, else now): 24 hours. A token
/// valid for longer is a credential that cannot be taken back, whoever signed it.
pub const MAX_TOKEN_LIFETIME_SECONDS: i64 = 24 * 60 * 60;

/// The longest identity claim (`oid`, `sub`, `tid`, `appid`, `azp`) accepted, in bytes.
pub const MAX_CLAIM_BYTES: usize = 256;

/// The namespace of external principals' ids (a fixed GUID; changing it renames every
/// external principal, so DO NOT CHANGE).
const EXTERNAL_PRINCIPAL_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1c_2a9e_8d4b_4e07_9a35_c1f0_7b2d_e864);

/// The principal id hds gives the subject `subject` (the token's `oid`, else its `sub`) of
/// tenant `tenant_id` (its `tid`, empty when absent) at the external issuer `issuer`: the
/// version-5 GUID of the name `{len}:{issuer}{len}:{tenant}{len}:{subject}` (lengths in bytes,
/// so no two triples share a name) in a namespace of hds's own. Role assignments and access
/// policies name external principals by this id; a 403 shows it too.
pub fn external_principal_id(issuer: &str, tenant_id: &str, subject: &str) -> String {
    let name = format!(
        "{}:{issuer}{}:{tenant_id}{}:{subject}",
        issuer.len(),
        tenant_id.len(),
        subject.len()
    );
    uuid::Uuid::new_v5(&EXTERNAL_PRINCIPAL_NAMESPACE, name.as_bytes())
        .hyphenated()
        .to_string()
}

/// An issued access token and what the token endpoint says about it.
#[derive(Clone)]
pub struct AccessToken {
    /// The compact JWS.
    pub access_token: String,
    /// Seconds until it expires, as the token endpoint reports it (one less than its lifetime,
    /// like Entra ID).
    pub expires_in: i64,
    /// When it expires (Unix seconds).
    pub expires_on: i64,
    /// The audience it was issued for.
    pub resource: String,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AccessToken")
            .field("access_token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .field("resource", &self.resource)
            .finish()
    }
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    tid: &'a str,
    oid: &'a str,
    sub: &'a str,
    appid: &'a str,
    azp: &'a str,
    idtyp: &'static str,
    uti: String,
    ver: &'static str,
}

#[derive(Deserialize)]
struct ReceivedClaims {
    iss: String,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    azp: Option<String>,
}

/// Whether the token's `aud` (a string or an array of strings) names `expected`, ignoring a
/// trailing slash on either side. Scheme and host compare case-insensitively, as URLs do.
fn audience_matches(audience: Option<&serde_json::Value>, expected: &str) -> bool {
    let expected = expected.trim_end_matches('/');
    let one = |value: &serde_json::Value| {
        value.as_str().is_some_and(|audience| {
            audience
                .trim_end_matches('/')
                .eq_ignore_ascii_case(expected)
        })
    };
    match audience {
        Some(serde_json::Value::Array(values)) => values.iter().any(one),
        Some(value) => one(value),
        None => false,
    }
}

impl Identity {
    /// Issues a token for `principal` with audience `resource`.
    pub(crate) async fn issue_token(
        &self,
        principal: &Principal,
        resource: &str,
    ) -> Result<AccessToken, IdentityError> {
        let key = self.active_signing_key().await?;
        let now = now_unix();
        let issuer = self.issuer(&principal.tenant_id);
        let expires_on = now + TOKEN_LIFETIME_SECONDS;
        let claims = IssuedClaims {
            aud: resource,
            iss: &issuer,
            iat: now,
            nbf: now,
            exp: expires_on,
            tid: &principal.tenant_id,
            oid: &principal.principal_id,
            sub: &principal.principal_id,
            appid: &principal.client_id,
            azp: &principal.client_id,
            idtyp: "app",
            uti: new_guid(),
            ver: "2.0",
        };
        let access_token = key.sign(&claims).map_err(|_| IdentityError::Crypto)?;
        Ok(AccessToken {
            access_token,
            expires_in: TOKEN_LIFETIME_SECONDS - 1,
            expires_on,
            resource: resource.to_owned(),
        })
    }

    /// Issues a token for the managed identity `principal_id` with audience `resource`, in
    /// process: this is how hosted services (the DICOM service) act as their identity.
    pub async fn issue_token_for_managed_identity(
        &self,
        principal_id: &str,
        resource: &str,
    ) -> Result<AccessToken, IdentityError> {
        let principal = self
            .principal(principal_id)
            .await?
            .filter(|principal| {
                matches!(
                    principal.kind,
                    PrincipalKind::SystemAssignedIdentity | PrincipalKind::UserAssignedIdentity
                )
            })
            .ok_or(IdentityError::PrincipalNotFound)?;
        self.issue_token(&principal, resource).await
    }

    /// Issues a token for the service principal `client_id` when `client_secret` is its
    /// secret (the client-credentials grant); `None` when the credentials are wrong,
    /// [`IdentityError::ClientSecretExpired`] when the secret was right but is not current.
    pub async fn issue_token_for_client_credentials(
        &self,
        client_id: &str,
        client_secret: &str,
        resource: &str,
    ) -> Result<Option<AccessToken>, IdentityError> {
        match self.check_secret(client_id, client_secret).await? {
            SecretCheck::Valid(principal) => {
                Ok(Some(self.issue_token(&principal, resource).await?))
            }
            SecretCheck::Expired => Err(IdentityError::ClientSecretExpired),
            SecretCheck::Invalid => Ok(None),
        }
    }

    /// Validates a bearer token for an endpoint whose audience is `expected_audience`.
    pub async fn validate_token(
        &self,
        token: &str,
        expected_audience: &str,
    ) -> Result<AuthenticatedPrincipal, TokenError> {
        let (jws, claims) = parse_token(token)?;

        let platform_tenant = claims
            .tid
            .as_deref()
            .filter(|tenant| claims.iss == self.issuer(tenant));
        let external = self
            .inner
            .config
            .external_issuers
            .iter()
            .find(|issuer| issuer.issuer == claims.iss);
        if platform_tenant.is_some() {
            let kid = jws
                .header
                .kid
                .as_deref()
                .ok_or(TokenError::UnknownSigningKey)?;
            let key = self
                .platform_verifying_key(kid)
                .await?
                .ok_or(TokenError::UnknownSigningKey)?;
            // The same token comes with every request of a client: its signature is verified
            // once, then known by the digest of the whole token while its key stays published.
            let cache = &self.inner.access_cache;
            let digest = token_digest(token);
            if cache.verified_by(&digest).as_deref() != Some(kid) {
                let generation = cache.generation();
                if !jws.verify(&key) {
                    return Err(TokenError::InvalidSignature);
                }
                cache.remember_verified(digest, kid, generation);
            }
        } else if let Some(external) = external {
            let jwks = self
                .external_keys(external, jws.header.kid.as_deref())
                .await?;
            verify_with_jwks(&jws, &jwks)?;
        } else {
            return Err(TokenError::UntrustedIssuer);
        }

        let expires = check_claims(
            &claims,
            platform_tenant.is_some(),
            expected_audience,
            now_unix(),
        )?;

        let audience = expected_audience.trim_end_matches('/').to_owned();
        let expires_at = expires as i64;
        if let Some(tenant_id) = platform_tenant {
            let principal_id = claims.oid.as_deref().ok_or(TokenError::Malformed)?;
            let principal = self
                .principal_access(principal_id)
                .await?
                .principal
                .clone()
                .filter(|principal| principal.tenant_id == tenant_id)
                .ok_or(TokenError::PrincipalDeleted)?;
            return Ok(AuthenticatedPrincipal {
                principal_id: principal.principal_id,
                tenant_id: Some(principal.tenant_id),
                client_id: Some(principal.client_id),
                issuer: claims.iss,
                external: false,
                audience,
                expires_at,
            });
        }
        let subject = claims
            .oid
            .or(claims.sub)
            .filter(|subject| !subject.is_empty())
            .ok_or(TokenError::MissingClaim("oid or sub"))?;
        let principal_id =
            external_principal_id(&claims.iss, claims.tid.as_deref().unwrap_or(""), &subject);
        Ok(AuthenticatedPrincipal {
            principal_id,
            tenant_id: claims.tid,
            client_id: claims.appid.or(claims.azp),
            issuer: claims.iss,
            external: true,
            audience,
            expires_at,
        })
    }
}

/// The first steps of validation, which read the token but trust nothing in it: its length,
/// then the compact JWS and its claims as JSON.
fn parse_token(token: &str) -> Result<(UnverifiedJws<'_>, ReceivedClaims), TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge {
            limit: MAX_TOKEN_BYTES,
        });
    }
    let jws = UnverifiedJws::parse(token).map_err(|_| TokenError::Malformed)?;
    let claims: ReceivedClaims =
        serde_json::from_slice(&jws.payload).map_err(|_| TokenError::Malformed)?;
    Ok((jws, claims))
}

/// Verifies an external issuer's token against its published keys: those named by the
/// token's `kid` (every key when it names none) that hds can use, each with its one algorithm.
fn verify_with_jwks(jws: &UnverifiedJws<'_>, jwks: &JwkSet) -> Result<(), TokenError> {
    let candidates: Vec<VerifyingKey> = jwks
        .keys
        .iter()
        .filter(|jwk| match (&jws.header.kid, &jwk.kid) {
            (Some(wanted), Some(kid)) => wanted == kid,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .filter_map(VerifyingKey::from_jwk)
        .collect();
    if candidates.is_empty() {
        return Err(TokenError::UnknownSigningKey);
    }
    if !candidates.iter().any(|key| jws.verify(key)) {
        return Err(TokenError::InvalidSignature);
    }
    Ok(())
}

/// The checks on a verified token's claims at time `now` (Unix seconds): `exp` required and
/// not past, `nbf` (required of the platform's own tokens) not ahead, the lifetime, the size of
/// identity claims and the audience. Returns `exp`.
fn check_claims(
    claims: &ReceivedClaims,
    platform: bool,
    expected_audience: &str,
    now: i64,
) -> Result<f64, TokenError> {
    let now = now as f64;
    let skew = CLOCK_SKEW_SECONDS as f64;
    let expires = claims.exp.ok_or(TokenError::MissingClaim("exp"))?;
    if expires + skew <= now {
        return Err(TokenError::Expired);
    }
    if platform && claims.nbf.is_none() {
        return Err(TokenError::MissingClaim("nbf"));
    }
    if claims.nbf.is_some_and(|not_before| not_before - skew > now) {
        return Err(TokenError::NotYetValid);
    }
    let valid_from = claims.nbf.or(claims.iat).unwrap_or(now);
    let lifetime_limit = MAX_TOKEN_LIFETIME_SECONDS as f64;
    if expires - valid_from > lifetime_limit || expires - now > lifetime_limit + skew {
        return Err(TokenError::LifetimeTooLong {
            limit_seconds: MAX_TOKEN_LIFETIME_SECONDS,
        });
    }
    for (name, value) in [
        ("oid", &claims.oid),
        ("sub", &claims.sub),
        ("tid", &claims.tid),
        ("appid", &claims.appid),
        ("azp", &claims.azp),
    ] {
        if value
            .as_ref()
            .is_some_and(|value| value.len() > MAX_CLAIM_BYTES)
        {
            return Err(TokenError::ClaimTooLarge {
                claim: name,
                limit: MAX_CLAIM_BYTES,
            });
        }
    }
    if !audience_matches(claims.aud.as_ref(), expected_audience) {
        return Err(TokenError::WrongAudience {
            expected: expected_audience.to_owned(),
        });
    }
    Ok(expires)
}

/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Validation of a bearer token up to its signature, as for an external issuer that
    /// publishes `jwks`: the length limit, the compact JWS, the claims' JSON, the choice of
    /// key and the signature check.
    pub fn verify_token(token: &str, jwks: &JwkSet) -> Result<(), TokenError> {
        let (jws, _claims) = parse_token(token)?;
        verify_with_jwks(&jws, jwks)
    }

    /// The claim checks validation runs once the signature verified, at `now` (Unix
    /// seconds), on a token that is only parsed here.
    pub fn check_token_claims(
        token: &str,
        platform: bool,
        expected_audience: &str,
        now: i64,
    ) -> Result<(), TokenError> {
        let (_jws, claims) = parse_token(token)?;
        check_claims(&claims, platform, expected_audience, now).map(|_| ())
    }
}

/// SHA-256 of a whole compact JWS: the identity of a token in the access cache.
fn token_digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_ignores_one_trailing_slash_and_accepts_arrays() {
        let with_slash = serde_json::json!("https://management.azure.com/");
        let without = serde_json::json!("https://management.azure.com");
        let array = serde_json::json!(["api://other", "https://vault.azure.net"]);
        assert!(audience_matches(
            Some(&with_slash),
            "https://management.azure.com"
        ));
        assert!(audience_matches(
            Some(&without),
            "https://management.azure.com/"
        ));
        assert!(audience_matches(Some(&array), "https://vault.azure.net"));
        assert!(!audience_matches(Some(&without), "https://vault.azure.net"));
        assert!(!audience_matches(
            Some(&serde_json::json!("https://management.azure.com.evil")),
            "https://management.azure.com"
        ));
        assert!(!audience_matches(None, "https://management.azure.com"));
    }
}
