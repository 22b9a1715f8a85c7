-- The change feed: one entry per create, replacement and delete of an instance, in commit order.
-- Sequences count per service in dicom_changefeed_heads, whose row a writer updates last in its
-- transaction: on PostgreSQL that row lock orders the service's writers, so a sequence is
-- never visible before a smaller one is. Timestamps (microseconds since 1970, UTC) never go
-- back within a service. The UIDs are the instance's own sealed UIDs (bound to its SOP
-- instance token); nothing else of the instance is kept here.
CREATE TABLE dicom_changefeed_heads (
    service TEXT PRIMARY KEY,
    last_sequence BIGINT NOT NULL,
    last_timestamp BIGINT NOT NULL
);

CREATE TABLE dicom_changefeed (
    service TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    timestamp_us BIGINT NOT NULL,
    action BIGINT NOT NULL,
    state BIGINT NOT NULL,
    sop_token BYTEA NOT NULL,
    uids BYTEA NOT NULL,
    PRIMARY KEY (service, sequence)
);
CREATE INDEX dicom_changefeed_instance ON dicom_changefeed (service, sop_token);
CREATE INDEX dicom_changefeed_time ON dicom_changefeed (service, timestamp_us, sequence);
