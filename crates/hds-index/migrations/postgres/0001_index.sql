-- The DICOM index. Every value that came from an instance is a token (uid_token, *_tokens)
-- or sealed bytes (attributes, metadata, uids, frames); service names, blob names, sizes and
-- transfer syntaxes are not patient data.
CREATE TABLE dicom_studies (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service TEXT NOT NULL,
    uid_token BYTEA NOT NULL,
    attributes BYTEA NOT NULL,
    UNIQUE (service, uid_token)
);

CREATE TABLE dicom_series (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_id BIGINT NOT NULL REFERENCES dicom_studies (id) ON DELETE CASCADE,
    uid_token BYTEA NOT NULL,
    attributes BYTEA NOT NULL,
    UNIQUE (study_id, uid_token)
);

CREATE TABLE dicom_instances (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service TEXT NOT NULL,
    study_id BIGINT NOT NULL REFERENCES dicom_studies (id) ON DELETE CASCADE,
    series_id BIGINT NOT NULL REFERENCES dicom_series (id) ON DELETE CASCADE,
    uid_token BYTEA NOT NULL,
    blob_name TEXT NOT NULL,
    size BIGINT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    uids BYTEA NOT NULL,
    attributes BYTEA NOT NULL,
    metadata BYTEA NOT NULL,
    frames BYTEA,
    UNIQUE (service, uid_token)
);
CREATE INDEX dicom_instances_series ON dicom_instances (series_id, id);
CREATE INDEX dicom_instances_study ON dicom_instances (study_id, id);

CREATE TABLE dicom_study_tokens (
    token BYTEA NOT NULL,
    study_id BIGINT NOT NULL REFERENCES dicom_studies (id) ON DELETE CASCADE,
    PRIMARY KEY (token, study_id)
);
CREATE INDEX dicom_study_tokens_row ON dicom_study_tokens (study_id);

CREATE TABLE dicom_series_tokens (
    token BYTEA NOT NULL,
    series_id BIGINT NOT NULL REFERENCES dicom_series (id) ON DELETE CASCADE,
    PRIMARY KEY (token, series_id)
);
CREATE INDEX dicom_series_tokens_row ON dicom_series_tokens (series_id);

CREATE TABLE dicom_instance_tokens (
    token BYTEA NOT NULL,
    instance_id BIGINT NOT NULL REFERENCES dicom_instances (id) ON DELETE CASCADE,
    PRIMARY KEY (token, instance_id)
);
CREATE INDEX dicom_instance_tokens_row ON dicom_instance_tokens (instance_id);
