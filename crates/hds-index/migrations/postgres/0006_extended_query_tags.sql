-- Extended query tags: the attributes a service searches beyond the defaults, and the reindex
-- operations that index them in instances stored before. A tag's values are search tokens in
-- the level's token table, under a domain made of the tag's random key (so a deleted tag's
-- tokens are unreachable, and a tag added again starts afresh), and sealed elements in the
-- row's attributes. Paths, VRs, private creators and statuses are schema, not patient data.
CREATE TABLE dicom_extended_query_tags (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service TEXT NOT NULL,
    tag_key TEXT NOT NULL,
    path TEXT NOT NULL,
    vr TEXT NOT NULL,
    private_creator TEXT,
    level TEXT NOT NULL,
    status TEXT NOT NULL,
    query_status TEXT NOT NULL,
    operation_id TEXT,
    created_us BIGINT NOT NULL,
    UNIQUE (service, path)
);

-- One row per instance whose value of a tag could not be indexed; the instance's UIDs are read
-- from its own (sealed) row, and the error goes with it. The message is fixed text, never a value.
CREATE TABLE dicom_extended_query_tag_errors (
    tag_id BIGINT NOT NULL REFERENCES dicom_extended_query_tags (id) ON DELETE CASCADE,
    instance_id BIGINT NOT NULL REFERENCES dicom_instances (id) ON DELETE CASCADE,
    message TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    PRIMARY KEY (tag_id, instance_id)
);
CREATE INDEX dicom_extended_query_tag_errors_instance ON dicom_extended_query_tag_errors (instance_id);

-- Long-running operations (reindex): their progress is a cursor over the service's instances
-- in id order, so whichever process holds the lease next goes on from there.
CREATE TABLE dicom_operations (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    updated_us BIGINT NOT NULL,
    cursor_id BIGINT NOT NULL,
    processed BIGINT NOT NULL,
    total BIGINT NOT NULL,
    resources TEXT NOT NULL,
    lease_owner TEXT,
    lease_until_us BIGINT NOT NULL
);
CREATE INDEX dicom_operations_service ON dicom_operations (service, status);

-- A service's instances in id order: what a reindex walks.
CREATE INDEX dicom_instances_service_id ON dicom_instances (service, id);
