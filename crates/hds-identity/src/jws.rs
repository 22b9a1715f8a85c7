//! Compact JWS (RFC 7515) on aws-lc-rs: just what access tokens need, nothing more.
//!
//! Hand-rolled on purpose: a general JWT library lets the token pick its own algorithm from
//! the header, which is how `alg: none` and "HS256 keyed with the RSA public key" attacks
//! work. Here a verifying key carries its one algorithm, and a token whose header names any
//! other is refused before its signature is looked at.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The algorithm of the platform's own signing keys.
pub(crate) const ES256: &str = "ES256";
/// The RSA algorithm accepted from external issuers.
pub(crate) const RS256: &str = "RS256";

/// base64url without padding, as JOSE wants it.
pub(crate) fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `None` when malformed.
pub(crate) fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Why a compact JWS could not even be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed token")]
pub(crate) struct Malformed;

/// A JOSE header as far as validation reads it.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

/// A parsed, not yet verified, compact JWS.
pub(crate) struct UnverifiedJws<'a> {
    pub header: Header,
    pub payload: Vec<u8>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> UnverifiedJws<'a> {
    /// Splits and decodes `token`; verifies nothing.
    pub fn parse(token: &'a str) -> Result<UnverifiedJws<'a>, Malformed> {
        let (signing_input, signature) = token.rsplit_once('.').ok_or(Malformed)?;
        let (header, payload) = signing_input.split_once('.').ok_or(Malformed)?;
        if payload.contains('.') {
            return Err(Malformed);
        }
        let header = base64url_decode(header).ok_or(Malformed)?;
        let header: Header = serde_json::from_slice(&header).map_err(|_| Malformed)?;
        let payload = base64url_decode(payload).ok_or(Malformed)?;
        let signature = base64url_decode(signature).ok_or(Malformed)?;
        Ok(UnverifiedJws {
            header,
            payload,
            signing_input,
            signature,
        })
    }

    /// True when the header names exactly `key`'s algorithm and the signature verifies under
    /// `key`. The header's `alg` only has to agree; it never chooses.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        if self.header.alg != key.algorithm() {
            return false;
        }
        key.verify(self.signing_input.as_bytes(), &self.signature)
    }
}

/// A public key that verifies exactly one algorithm.
#[derive(Debug, Clone)]
pub(crate) enum VerifyingKey {
    /// P-256, ES256; the uncompressed point (0x04 || X || Y).
    Es256 { public_point: Vec<u8> },
    /// RSA PKCS#1 v1.5 with SHA-256, 2048 to 8192 bits.
    Rs256 { modulus: Vec<u8>, exponent: Vec<u8> },
}

impl VerifyingKey {
    /// The JOSE name of the one algorithm this key verifies.
    pub fn algorithm(&self) -> &'static str {
        match self {
            VerifyingKey::Es256 { .. } => ES256,
            VerifyingKey::Rs256 { .. } => RS256,
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            VerifyingKey::Es256 { public_point } => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_point)
                    .verify(message, signature)
                    .is_ok()
            }
            VerifyingKey::Rs256 { modulus, exponent } => RsaPublicKeyComponents {
                n: modulus.as_slice(),
                e: exponent.as_slice(),
            }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
            .is_ok(),
        }
    }

    /// Reads one key of a JWKS document. Keys of other types, curves or uses are `None`:
    /// they are skipped, not errors, since issuers publish keys for other purposes too.
    pub fn from_jwk(jwk: &Jwk) -> Option<VerifyingKey> {
        if jwk
            .key_use
            .as_deref()
            .is_some_and(|key_use| key_use != "sig")
        {
            return None;
        }
        match jwk.kty.as_str() {
            "EC" => {
                if jwk.crv.as_deref() != Some("P-256")
                    || jwk.alg.as_deref().is_some_and(|alg| alg != ES256)
                {
                    return None;
                }
                let x = base64url_decode(jwk.x.as_deref()?)?;
                let y = base64url_decode(jwk.y.as_deref()?)?;
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                let mut public_point = Vec::with_capacity(65);
                public_point.push(0x04);
                public_point.extend_from_slice(&x);
                public_point.extend_from_slice(&y);
                Some(VerifyingKey::Es256 { public_point })
            }
            "RSA" => {
                if jwk.alg.as_deref().is_some_and(|alg| alg != RS256) {
                    return None;
                }
                let modulus = base64url_decode(jwk.n.as_deref()?)?;
                let exponent = base64url_decode(jwk.e.as_deref()?)?;
                Some(VerifyingKey::Rs256 { modulus, exponent })
            }
            _ => None,
        }
    }
}

/// One JSON Web Key (RFC 7517) as published in a JWKS document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Jwk {
    /// Key type: `EC` or `RSA`.
    pub kty: String,
    /// Key id, matched against a token header's `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Intended use; `sig` for token signing keys.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    /// Algorithm, when the issuer pins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// EC curve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC x coordinate (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

/// A JWKS document: `{"keys":[...]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// A P-256 private key that signs ES256 tokens.
pub(crate) struct SigningKey {
    pub kid: String,
    key_pair: EcdsaKeyPair,
}

impl SigningKey {
    /// A fresh key and its PKCS#8 encoding (to be sealed before it is stored).
    pub fn generate(
        kid: String,
    ) -> Result<(SigningKey, zeroize::Zeroizing<Vec<u8>>), aws_lc_rs::error::Unspecified> {
        let random = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random)?;
        let pkcs8 = zeroize::Zeroizing::new(pkcs8.as_ref().to_vec());
        let key = SigningKey::from_pkcs8(kid, &pkcs8)?;
        Ok((key, pkcs8))
    }

    /// Loads a key from its PKCS#8 encoding.
    pub fn from_pkcs8(
        kid: String,
        pkcs8: &[u8],
    ) -> Result<SigningKey, aws_lc_rs::error::Unspecified> {
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)?;
        Ok(SigningKey { kid, key_pair })
    }

    /// The public half as a JWK.
    pub fn public_jwk(&self) -> Jwk {
        let point = self.key_pair.public_key().as_ref();
        // An uncompressed P-256 point is 0x04 || X(32) || Y(32): aws-lc-rs always serializes
        // public keys uncompressed.
        let (x, y) = point
            .get(1..33)
            .zip(point.get(33..65))
            .unwrap_or((&[], &[]));
        Jwk {
            kty: "EC".to_owned(),
            kid: Some(self.kid.clone()),
            key_use: Some("sig".to_owned()),
            alg: Some(ES256.to_owned()),
            crv: Some("P-256".to_owned()),
            x: Some(base64url(x)),
            y: Some(base64url(y)),
            n: None,
            e: None,
        }
    }

    /// The verifying half.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::Es256 {
            public_point: self.key_pair.public_key().as_ref().to_vec(),
        }
    }

    /// Signs `claims` into a compact JWS with header `{"alg":"ES256","typ":"JWT","kid":...}`.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, aws_lc_rs::error::Unspecified> {
        let header = serde_json::json!({ "typ": "JWT", "alg": ES256, "kid": self.kid });
        let header = serde_json::to_vec(&header).map_err(|_| aws_lc_rs::error::Unspecified)?;
        let claims = serde_json::to_vec(claims).map_err(|_| aws_lc_rs::error::Unspecified)?;
        let signing_input = format!("{}.{}", base64url(&header), base64url(&claims));
        let signature = self
            .key_pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", base64url(signature.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_token_verifies_only_with_its_key_and_algorithm() {
        let (key, _) = SigningKey::generate("k1".to_owned()).expect("key generation");
        let (other, _) = SigningKey::generate("k2".to_owned()).expect("key generation");
        let token = key.sign(&serde_json::json!({"a": 1})).expect("sign");
        let parsed = UnverifiedJws::parse(&token).expect("parse");
        assert_eq!(parsed.header.alg, "ES256");
        assert_eq!(parsed.header.kid.as_deref(), Some("k1"));
        assert!(parsed.verify(&key.verifying_key()));
        assert!(!parsed.verify(&other.verifying_key()));
        let from_jwk = VerifyingKey::from_jwk(&key.public_jwk()).expect("jwk");
        assert!(parsed.verify(&from_jwk));
    }

    #[test]
    fn header_algorithm_must_agree_with_the_key() {
        let (key, _) = SigningKey::generate("k1".to_owned()).expect("key generation");
        let token = key.sign(&serde_json::json!({"a": 1})).expect("sign");
        let (_, rest) = token.split_once('.').expect("three parts");
        let forged_header = base64url(br#"{"alg":"none","kid":"k1"}"#);
        let forged = format!("{forged_header}.{rest}");
        let parsed = UnverifiedJws::parse(&forged).expect("parse");
        assert!(!parsed.verify(&key.verifying_key()));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for token in ["", "a", "a.b", "a.b.c.d", "!!.e30.AA", "e30.!!.AA"] {
            assert!(UnverifiedJws::parse(token).is_err(), "{token}");
        }
    }
}
