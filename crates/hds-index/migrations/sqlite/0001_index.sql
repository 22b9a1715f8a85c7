-- The DICOM index. Every value that came from an instance is a token (uid_token, *_tokens)
-- or sealed bytes (attributes, metadata, uids, frames); service names, blob names, sizes and
-- transfer syntaxes are not patient data.
CREATE TABLE dicom_studies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    uid_token BLOB NOT NULL,
    attributes BLOB NOT NULL,
    UNIQUE (service, uid_token)
);

CREATE TABLE dicom_series (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id INTEGER NOT NULL REFERENCES dicom_studies (id) ON DELETE CASCADE,
    uid_token BLOB NOT NULL,
    attributes BLOB NOT NULL,
    UNIQUE (study_id, uid_token)
);

CREATE TABLE dicom_instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    study_id INTEGER NOT NULL REFERENCES dicom_studies (id) ON DELETE CASCADE,
    series_id INTEGER NOT NULL REFERENCES dicom_series (id) ON DELETE CASCADE,
    uid_token BLOB NOT NULL,
    blob_name TEXT NOT NULL,
    size BIGINT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    uids BLOB NOT NULL,
    attributes BLOB NOT NULL,
    metadata BLOB NOT NULL,
    frames BLOB,
    UNIQUE (service, uid_token)
);
CREATE INDEX dicom_instances_series ON dicom_instances (series_id, id);
CREATE INDEX dicom_instances_study ON dicom_instances (study_id, id);

CREATE TABLE dicom_study_tokens (
    token BLOB NOT NULL,
    study_id INTEGER NOT NULL REFERENCES dicom_studies (id) ON DELETE CASCADE,
    PRIMARY KEY (token, study_id)
);
CREATE INDEX dicom_study_tokens_row ON dicom_study_tokens (study_id);

CREATE TABLE dicom_series_tokens (
    token BLOB NOT NULL,
    series_id INTEGER NOT NULL REFERENCES dicom_series (id) ON DELETE CASCADE,
    PRIMARY KEY (token, series_id)
);
CREATE INDEX dicom_series_tokens_row ON dicom_series_tokens (series_id);

CREATE TABLE dicom_instance_tokens (
    token BLOB NOT NULL,
    instance_id INTEGER NOT NULL REFERENCES dicom_instances (id) ON DELETE CASCADE,
    PRIMARY KEY (token, instance_id)
);
CREATE INDEX dicom_instance_tokens_row ON dicom_instance_tokens (instance_id);
