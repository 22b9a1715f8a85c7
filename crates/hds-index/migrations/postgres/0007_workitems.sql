-- UPS workitems (UPS-RS). A workitem's dataset and its Transaction UID are sealed bound to the
-- row (its Workitem UID's token); what it is searched by is keyed tokens only. The version
-- counts the row's changes, so that a transaction that read an older one changes nothing
-- (optimistic concurrency): it is a number of writes, not patient data.
CREATE TABLE dicom_workitems (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service TEXT NOT NULL,
    uid_token BYTEA NOT NULL,
    version BIGINT NOT NULL,
    dataset BYTEA NOT NULL,
    transaction_uid BYTEA,
    UNIQUE (service, uid_token)
);
-- A service's workitems in creation order: what an unfiltered search pages through.
CREATE INDEX dicom_workitems_service_id ON dicom_workitems (service, id);

-- The search tokens of each workitem (a token is made under the service's key, so it also
-- names the service).
CREATE TABLE dicom_workitem_tokens (
    workitem_id BIGINT NOT NULL REFERENCES dicom_workitems (id) ON DELETE CASCADE,
    token BYTEA NOT NULL,
    PRIMARY KEY (token, workitem_id)
);
CREATE INDEX dicom_workitem_tokens_workitem ON dicom_workitem_tokens (workitem_id);
