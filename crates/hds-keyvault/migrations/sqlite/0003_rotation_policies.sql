-- Key rotation policies: one per key, as JSON, with when it was first and last set. A key
-- without a row has Key Vault's default policy (notify 30 days before expiry, never rotate).
CREATE TABLE keyvault_rotation_policies (
    vault TEXT NOT NULL,
    name TEXT NOT NULL,
    policy TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (vault, name),
    FOREIGN KEY (vault, name) REFERENCES keyvault_keys (vault, name) ON DELETE CASCADE
);
