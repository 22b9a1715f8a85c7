-- Bulk update: an updated instance keeps its first (original) version, readable with
-- `msdicom-request-original: true`. The original's blob name, its blob key (wrapped under the
-- study key and bound to that blob name, as `blob_key` is) and its size; NULL until updated.
ALTER TABLE dicom_instances ADD COLUMN original_blob_name TEXT;
ALTER TABLE dicom_instances ADD COLUMN original_blob_key BLOB;
ALTER TABLE dicom_instances ADD COLUMN original_size BIGINT;

-- An update operation's input (the studies and the change dataset) and its results (counts
-- and errors naming studies), sealed under the service's index key: both are patient data.
ALTER TABLE dicom_operations ADD COLUMN sealed_input BLOB;
ALTER TABLE dicom_operations ADD COLUMN sealed_results BLOB;
CREATE INDEX dicom_operations_kind ON dicom_operations (service, kind, status);
