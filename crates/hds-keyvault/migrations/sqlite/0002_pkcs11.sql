-- RSA-HSM key versions held in a PKCS#11 token: their CKA_ID. Such rows keep an empty
-- sealed_private (the private key never leaves the token); software rows keep NULL here.
ALTER TABLE keyvault_key_versions ADD COLUMN pkcs11_id BLOB;
