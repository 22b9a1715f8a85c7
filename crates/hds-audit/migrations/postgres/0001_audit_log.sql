CREATE TABLE audit_log (
    sequence BIGINT PRIMARY KEY NOT NULL,
    recorded_ms BIGINT NOT NULL,
    principal_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    previous_mac TEXT NOT NULL,
    mac TEXT NOT NULL
);
