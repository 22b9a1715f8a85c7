CREATE TABLE cmk_key_access (
    service_key TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    since_ms BIGINT,
    reason_code TEXT,
    reason_message TEXT,
    latest_kid TEXT,
    updated_ms BIGINT NOT NULL
);
