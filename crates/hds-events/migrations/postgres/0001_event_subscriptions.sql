CREATE TABLE event_subscriptions (
    id_key TEXT PRIMARY KEY NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    workspace_key TEXT NOT NULL,
    topic TEXT NOT NULL,
    endpoint_url TEXT NOT NULL,
    delivery_schema TEXT NOT NULL,
    included_types TEXT NOT NULL,
    subject_begins_with TEXT NOT NULL,
    subject_ends_with TEXT NOT NULL,
    subject_case_sensitive BIGINT NOT NULL,
    max_events_per_batch BIGINT NOT NULL,
    preferred_batch_kb BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    ttl_minutes BIGINT NOT NULL,
    active_since_us BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until_us BIGINT,
    delivered BIGINT NOT NULL DEFAULT 0,
    dead_lettered BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX event_subscriptions_workspace ON event_subscriptions (workspace_key);
CREATE TABLE event_cursors (
    subscription_key TEXT NOT NULL,
    service TEXT NOT NULL,
    last_sequence BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    first_failure_us BIGINT,
    next_attempt_us BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (subscription_key, service)
);
