CREATE TABLE keyvault_vaults (
    name TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    properties TEXT NOT NULL,
    port BIGINT,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE keyvault_keys (
    vault TEXT NOT NULL REFERENCES keyvault_vaults (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    deleted_date BIGINT,
    scheduled_purge_date BIGINT,
    PRIMARY KEY (vault, name)
);
CREATE TABLE keyvault_key_versions (
    vault TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    kty TEXT NOT NULL,
    key_size BIGINT NOT NULL,
    key_ops TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    not_before BIGINT,
    expires BIGINT,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    tags TEXT NOT NULL,
    public_n BYTEA NOT NULL,
    public_e BYTEA NOT NULL,
    sealed_private BYTEA NOT NULL,
    PRIMARY KEY (vault, name, version),
    FOREIGN KEY (vault, name) REFERENCES keyvault_keys (vault, name) ON DELETE CASCADE
);
CREATE INDEX keyvault_key_versions_sequence ON keyvault_key_versions (vault, name, sequence);
