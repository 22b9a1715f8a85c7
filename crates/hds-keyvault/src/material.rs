//! RSA key material and the cryptographic operations of the keys API, over aws-lc-rs.
//!
//! A private key exists in three forms only: PKCS#8 DER sealed under the root key (at rest),
//! the same DER in a [`Zeroizing`] buffer while it is being sealed or opened, and aws-lc's
//! parsed key (freed with its bignums cleared). It is never serialized anywhere else.

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    self, KeyPairComponents, KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm,
    OaepPrivateDecryptingKey, OaepPublicEncryptingKey, Pkcs1PrivateDecryptingKey,
    Pkcs1PublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::signature::{
    self, KeyPair as _, RsaEncoding, UnparsedPublicKey, VerificationAlgorithm,
};
use zeroize::Zeroizing;

use crate::error::VaultError;

/// An encryption algorithm of the keys API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptionAlgorithm {
    /// RSA-OAEP with SHA-1 (and MGF1-SHA-1).
    RsaOaep,
    /// RSA-OAEP with SHA-256 (and MGF1-SHA-256).
    RsaOaep256,
    /// RSAES-PKCS1-v1_5, for old clients only.
    Rsa15,
}

impl EncryptionAlgorithm {
    /// Parses the `alg` of an encrypt/decrypt/wrap/unwrap request.
    pub fn parse(text: &str) -> Result<EncryptionAlgorithm, VaultError> {
        match text {
            "RSA-OAEP" => Ok(EncryptionAlgorithm::RsaOaep),
            "RSA-OAEP-256" => Ok(EncryptionAlgorithm::RsaOaep256),
            "RSA1_5" => Ok(EncryptionAlgorithm::Rsa15),
            other => Err(VaultError::BadParameter(format!(
                "algorithm '{other}' is not supported for RSA keys; use RSA-OAEP-256 (recommended), RSA-OAEP or RSA1_5"
            ))),
        }
    }

    fn oaep(self) -> Option<&'static OaepAlgorithm> {
        match self {
            EncryptionAlgorithm::RsaOaep => Some(&OAEP_SHA1_MGF1SHA1),
            EncryptionAlgorithm::RsaOaep256 => Some(&OAEP_SHA256_MGF1SHA256),
            EncryptionAlgorithm::Rsa15 => None,
        }
    }
}

/// A signature algorithm of the keys API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256 (salt length 32).
    Ps256,
    /// RSASSA-PSS with SHA-384 (salt length 48).
    Ps384,
    /// RSASSA-PSS with SHA-512 (salt length 64).
    Ps512,
}

impl SignatureAlgorithm {
    /// Parses the `alg` of a sign/verify request.
    pub fn parse(text: &str) -> Result<SignatureAlgorithm, VaultError> {
        match text {
            "RS256" => Ok(SignatureAlgorithm::Rs256),
            "RS384" => Ok(SignatureAlgorithm::Rs384),
            "RS512" => Ok(SignatureAlgorithm::Rs512),
            "PS256" => Ok(SignatureAlgorithm::Ps256),
            "PS384" => Ok(SignatureAlgorithm::Ps384),
            "PS512" => Ok(SignatureAlgorithm::Ps512),
            other => Err(VaultError::BadParameter(format!(
                "signature algorithm '{other}' is not supported for RSA keys; use RS256, RS384, RS512, PS256, PS384 or PS512"
            ))),
        }
    }

    fn digest_algorithm(self) -> &'static digest::Algorithm {
        match self {
            SignatureAlgorithm::Rs256 | SignatureAlgorithm::Ps256 => &digest::SHA256,
            SignatureAlgorithm::Rs384 | SignatureAlgorithm::Ps384 => &digest::SHA384,
            SignatureAlgorithm::Rs512 | SignatureAlgorithm::Ps512 => &digest::SHA512,
        }
    }

    fn signing_encoding(self) -> &'static dyn RsaEncoding {
        match self {
            SignatureAlgorithm::Rs256 => &signature::RSA_PKCS1_SHA256,
            SignatureAlgorithm::Rs384 => &signature::RSA_PKCS1_SHA384,
            SignatureAlgorithm::Rs512 => &signature::RSA_PKCS1_SHA512,
            SignatureAlgorithm::Ps256 => &signature::RSA_PSS_SHA256,
            SignatureAlgorithm::Ps384 => &signature::RSA_PSS_SHA384,
            SignatureAlgorithm::Ps512 => &signature::RSA_PSS_SHA512,
        }
    }

    fn verification(self) -> &'static dyn VerificationAlgorithm {
        match self {
            SignatureAlgorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            SignatureAlgorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            SignatureAlgorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            SignatureAlgorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            SignatureAlgorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            SignatureAlgorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
        }
    }
}

/// The private components of an imported RSA JWK (big-endian, as decoded from base64url).
pub struct RsaPrivateComponents {
    /// Modulus.
    pub n: Vec<u8>,
    /// Public exponent.
    pub e: Vec<u8>,
    /// Private exponent.
    pub d: Zeroizing<Vec<u8>>,
    /// First prime.
    pub p: Zeroizing<Vec<u8>>,
    /// Second prime.
    pub q: Zeroizing<Vec<u8>>,
    /// d mod (p-1).
    pub dp: Zeroizing<Vec<u8>>,
    /// d mod (q-1).
    pub dq: Zeroizing<Vec<u8>>,
    /// q^-1 mod p.
    pub qi: Zeroizing<Vec<u8>>,
}

/// An opened RSA private key, ready for every operation.
pub struct RsaKeyMaterial {
    signing: rsa::KeyPair,
    decrypting: PrivateDecryptingKey,
    public_der: Vec<u8>,
    modulus: Vec<u8>,
    public_exponent: Vec<u8>,
}

impl std::fmt::Debug for RsaKeyMaterial {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("RsaKeyMaterial(<redacted>)")
    }
}

/// The key sizes the vault creates.
pub fn key_size_for(bits: Option<u32>) -> Result<(KeySize, u32), VaultError> {
    match bits.unwrap_or(2048) {
        2048 => Ok((KeySize::Rsa2048, 2048)),
        3072 => Ok((KeySize::Rsa3072, 3072)),
        4096 => Ok((KeySize::Rsa4096, 4096)),
        other => Err(VaultError::BadParameter(format!(
            "key_size {other} is not supported; use 2048, 3072 or 4096"
        ))),
    }
}

impl RsaKeyMaterial {
    /// Generates a fresh key (public exponent 65537).
    pub fn generate(size: KeySize) -> Result<RsaKeyMaterial, VaultError> {
        let key = PrivateDecryptingKey::generate(size)
            .map_err(|_| VaultError::Internal("RSA key generation failed".into()))?;
        let pkcs8 = Zeroizing::new(
            key.as_der()
                .map_err(|_| VaultError::Internal("RSA key serialization failed".into()))?
                .as_ref()
                .to_vec(),
        );
        RsaKeyMaterial::from_pkcs8(&pkcs8)
    }

    /// Builds a key from imported JWK components, checking they are consistent.
    pub fn from_components(
        components: &RsaPrivateComponents,
    ) -> Result<RsaKeyMaterial, VaultError> {
        let key_components = KeyPairComponents {
            public_key: rsa::PublicKeyComponents {
                n: components.n.as_slice(),
                e: components.e.as_slice(),
            },
            d: components.d.as_slice(),
            p: components.p.as_slice(),
            q: components.q.as_slice(),
            dP: components.dp.as_slice(),
            dQ: components.dq.as_slice(),
            qInv: components.qi.as_slice(),
        };
        let key_pair = rsa::KeyPair::from_components(&key_components).map_err(|_| {
            VaultError::BadParameter(
                "the imported RSA key is invalid: n, e, d, p, q, dp, dq and qi must form one consistent RSA private key of 2048 to 8192 bits".into(),
            )
        })?;
        let pkcs8 = Zeroizing::new(
            key_pair
                .as_der()
                .map_err(|_| VaultError::Internal("RSA key serialization failed".into()))?
                .as_ref()
                .to_vec(),
        );
        RsaKeyMaterial::from_pkcs8(&pkcs8)
    }

    /// Parses PKCS#8 DER (as kept sealed at rest).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<RsaKeyMaterial, VaultError> {
        let signing = rsa::KeyPair::from_pkcs8(pkcs8).map_err(|_| VaultError::Sealed)?;
        let decrypting = PrivateDecryptingKey::from_pkcs8(pkcs8).map_err(|_| VaultError::Sealed)?;
        let public = signing.public_key();
        let modulus =
            strip_leading_zeros(public.modulus().big_endian_without_leading_zero()).to_vec();
        let public_exponent =
            strip_leading_zeros(public.exponent().big_endian_without_leading_zero()).to_vec();
        let public_der = public.as_ref().to_vec();
        Ok(RsaKeyMaterial {
            signing,
            decrypting,
            public_der,
            modulus,
            public_exponent,
        })
    }

    /// The key as PKCS#8 DER, for sealing.
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let der = self
            .signing
            .as_der()
            .map_err(|_| VaultError::Internal("RSA key serialization failed".into()))?;
        Ok(Zeroizing::new(der.as_ref().to_vec()))
    }

    /// Modulus size in bits.
    pub fn size_bits(&self) -> u32 {
        u32::try_from(self.decrypting.key_size_bits()).unwrap_or(u32::MAX)
    }

    /// The modulus (JWK `n`), big-endian.
    pub fn modulus(&self) -> &[u8] {
        &self.modulus
    }

    /// The public exponent (JWK `e`), big-endian.
    pub fn public_exponent(&self) -> &[u8] {
        &self.public_exponent
    }

    /// Encrypts (or wraps) `plaintext` with the public key.
    pub fn encrypt(
        &self,
        algorithm: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        encrypt_with(self.decrypting.public_key(), algorithm, plaintext)
    }

    /// Decrypts (or unwraps) `ciphertext` with the private key.
    pub fn decrypt(
        &self,
        algorithm: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let failed = || {
            VaultError::BadParameter(
                "the value could not be decrypted: check that it was encrypted with this key version's public key, with the same algorithm, and sent base64url-encoded".into(),
            )
        };
        let mut plaintext = Zeroizing::new(vec![0u8; self.decrypting.key_size_bytes()]);
        let written = match algorithm.oaep() {
            Some(oaep) => {
                let key = OaepPrivateDecryptingKey::new(self.decrypting.clone())
                    .map_err(|_| VaultError::Internal("OAEP key setup failed".into()))?;
                key.decrypt(oaep, ciphertext, &mut plaintext, None)
                    .map_err(|_| failed())?
                    .len()
            }
            None => {
                let key = Pkcs1PrivateDecryptingKey::new(self.decrypting.clone())
                    .map_err(|_| VaultError::Internal("PKCS#1 key setup failed".into()))?;
                key.decrypt(ciphertext, &mut plaintext)
                    .map_err(|_| failed())?
                    .len()
            }
        };
        plaintext.truncate(written);
        Ok(plaintext)
    }

    /// Signs a precomputed digest.
    pub fn sign_digest(
        &self,
        algorithm: SignatureAlgorithm,
        digest_value: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let digest = import_digest(algorithm, digest_value)?;
        let mut signature = vec![0u8; self.signing.public_modulus_len()];
        self.signing
            .sign_digest(algorithm.signing_encoding(), &digest, &mut signature)
            .map_err(|_| VaultError::Internal("RSA signing failed".into()))?;
        Ok(signature)
    }

    /// Verifies a signature over a precomputed digest.
    pub fn verify_digest(
        &self,
        algorithm: SignatureAlgorithm,
        digest_value: &[u8],
        signature_value: &[u8],
    ) -> Result<bool, VaultError> {
        let digest = import_digest(algorithm, digest_value)?;
        let key = UnparsedPublicKey::new(algorithm.verification(), self.public_der.as_slice());
        Ok(key.verify_digest(&digest, signature_value).is_ok())
    }
}

/// Checks that `digest_value` has the length of `algorithm`'s digest (callers sign a hash, not
/// the data itself).
pub fn check_digest_length(
    algorithm: SignatureAlgorithm,
    digest_value: &[u8],
) -> Result<(), VaultError> {
    import_digest(algorithm, digest_value).map(|_| ())
}

fn import_digest(
    algorithm: SignatureAlgorithm,
    digest_value: &[u8],
) -> Result<digest::Digest, VaultError> {
    let digest_algorithm = algorithm.digest_algorithm();
    digest::Digest::import_less_safe(digest_value, digest_algorithm).map_err(|_| {
        VaultError::BadParameter(format!(
            "the digest must be {} bytes for this algorithm (sign the hash of the data, not the data); got {}",
            digest_algorithm.output_len(),
            digest_value.len()
        ))
    })
}

/// An RSA public key alone: what the vault keeps of a key whose private half lives in a
/// PKCS#11 token. Encrypt, wrap and verify need nothing more.
pub struct RsaPublicKey {
    encrypting: PublicEncryptingKey,
    public_der: Vec<u8>,
}

impl std::fmt::Debug for RsaPublicKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RsaPublicKey")
            .field("bits", &self.encrypting.key_size_bits())
            .finish()
    }
}

impl RsaPublicKey {
    /// Builds the key from its modulus and public exponent (big-endian).
    pub fn from_components(
        modulus: &[u8],
        public_exponent: &[u8],
    ) -> Result<RsaPublicKey, VaultError> {
        let components = rsa::PublicKeyComponents {
            n: modulus,
            e: public_exponent,
        };
        let public_der = components
            .as_der()
            .map_err(|_| VaultError::Internal("stored RSA public key is invalid".into()))?
            .as_ref()
            .to_vec();
        let encrypting: PublicEncryptingKey = components
            .try_into()
            .map_err(|_| VaultError::Internal("stored RSA public key is invalid".into()))?;
        Ok(RsaPublicKey {
            encrypting,
            public_der,
        })
    }

    /// Modulus size in bits.
    pub fn size_bits(&self) -> u32 {
        u32::try_from(self.encrypting.key_size_bits()).unwrap_or(u32::MAX)
    }

    /// Encrypts (or wraps) `plaintext`.
    pub fn encrypt(
        &self,
        algorithm: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        encrypt_with(self.encrypting.clone(), algorithm, plaintext)
    }

    /// Verifies a signature over a precomputed digest.
    pub fn verify_digest(
        &self,
        algorithm: SignatureAlgorithm,
        digest_value: &[u8],
        signature_value: &[u8],
    ) -> Result<bool, VaultError> {
        let digest = import_digest(algorithm, digest_value)?;
        let key = UnparsedPublicKey::new(algorithm.verification(), self.public_der.as_slice());
        Ok(key.verify_digest(&digest, signature_value).is_ok())
    }
}

fn encrypt_with(
    public: PublicEncryptingKey,
    algorithm: EncryptionAlgorithm,
    plaintext: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let size_bits = public.key_size_bits();
    let too_long = || {
        VaultError::BadParameter(format!(
            "the value is too long for a {size_bits}-bit RSA key with this algorithm; wrap a symmetric key instead of the data itself"
        ))
    };
    match algorithm.oaep() {
        Some(oaep) => {
            let key = OaepPublicEncryptingKey::new(public)
                .map_err(|_| VaultError::Internal("OAEP key setup failed".into()))?;
            if plaintext.len() > key.max_plaintext_size(oaep) {
                return Err(too_long());
            }
            let mut ciphertext = vec![0u8; key.ciphertext_size()];
            let written = key
                .encrypt(oaep, plaintext, &mut ciphertext, None)
                .map_err(|_| too_long())?
                .len();
            ciphertext.truncate(written);
            Ok(ciphertext)
        }
        None => {
            let key = Pkcs1PublicEncryptingKey::new(public)
                .map_err(|_| VaultError::Internal("PKCS#1 key setup failed".into()))?;
            if plaintext.len() > key.max_plaintext_size() {
                return Err(too_long());
            }
            let mut ciphertext = vec![0u8; key.ciphertext_size()];
            let written = key
                .encrypt(plaintext, &mut ciphertext)
                .map_err(|_| too_long())?
                .len();
            ciphertext.truncate(written);
            Ok(ciphertext)
        }
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_round_trips() {
        let key = RsaKeyMaterial::generate(KeySize::Rsa2048).unwrap();
        assert_eq!(key.size_bits(), 2048);
        assert_eq!(key.public_exponent(), &[1, 0, 1]);
        for algorithm in [
            EncryptionAlgorithm::RsaOaep,
            EncryptionAlgorithm::RsaOaep256,
            EncryptionAlgorithm::Rsa15,
        ] {
            let ciphertext = key
                .encrypt(algorithm, b"thirty-two bytes of key material")
                .unwrap();
            assert_eq!(ciphertext.len(), 256);
            let plaintext = key.decrypt(algorithm, &ciphertext).unwrap();
            assert_eq!(plaintext.as_slice(), b"thirty-two bytes of key material");
        }
        let ciphertext = key.encrypt(EncryptionAlgorithm::RsaOaep256, b"x").unwrap();
        assert!(
            key.decrypt(EncryptionAlgorithm::RsaOaep, &ciphertext)
                .is_err()
        );
        let digest = digest::digest(&digest::SHA256, b"message");
        for algorithm in [SignatureAlgorithm::Rs256, SignatureAlgorithm::Ps256] {
            let signature = key.sign_digest(algorithm, digest.as_ref()).unwrap();
            assert!(
                key.verify_digest(algorithm, digest.as_ref(), &signature)
                    .unwrap()
            );
            let other = digest::digest(&digest::SHA256, b"other");
            assert!(
                !key.verify_digest(algorithm, other.as_ref(), &signature)
                    .unwrap()
            );
        }
        assert!(
            key.sign_digest(SignatureAlgorithm::Rs512, digest.as_ref())
                .is_err()
        );
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_key() {
        let key = RsaKeyMaterial::generate(KeySize::Rsa2048).unwrap();
        let reopened = RsaKeyMaterial::from_pkcs8(&key.to_pkcs8().unwrap()).unwrap();
        assert_eq!(reopened.modulus(), key.modulus());
        let ciphertext = key
            .encrypt(EncryptionAlgorithm::RsaOaep256, b"secret")
            .unwrap();
        assert_eq!(
            reopened
                .decrypt(EncryptionAlgorithm::RsaOaep256, &ciphertext)
                .unwrap()
                .as_slice(),
            b"secret"
        );
        assert!(key_size_for(Some(1024)).is_err());
    }
}
