-- The key hierarchy of each DICOM service. The root key is stored only wrapped by the
-- service's key-encryption key (kek_id, algorithm); the index root key and the study keys are
-- stored wrapped by the root key; each instance's blob key is stored wrapped by its study key.
-- generation counts root-key rotations, so a study key wrapped under a replaced root key is
-- never written.
CREATE TABLE dicom_service_keys (
    service TEXT PRIMARY KEY,
    kek_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    wrapped_root_key BLOB NOT NULL,
    wrapped_index_key BLOB NOT NULL,
    generation BIGINT NOT NULL
);

CREATE TABLE dicom_study_keys (
    service TEXT NOT NULL,
    study_token BLOB NOT NULL,
    wrapped_key BLOB NOT NULL,
    PRIMARY KEY (service, study_token)
);

ALTER TABLE dicom_instances ADD COLUMN blob_key BLOB;

-- Platform-managed key-encryption keys (PKCS#8), sealed under the platform root key.
CREATE TABLE dicom_platform_keks (
    name TEXT PRIMARY KEY,
    sealed_private_key BLOB NOT NULL
);
