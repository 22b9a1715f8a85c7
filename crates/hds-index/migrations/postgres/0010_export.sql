-- Export operations (their dicom_operations row holds the status, the lease, the identifier
-- cursor and the counts of identifiers): what each exports and where, sealed under the
-- service's index key (identifiers, destination with any SAS token, the error log's URL), how
-- far it got inside the current identifier, and the error log's lines so far (sealed).
CREATE TABLE dicom_export_operations (
    operation_id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    spec BYTEA NOT NULL,
    item_cursor BIGINT NOT NULL,
    exported BIGINT NOT NULL,
    skipped BIGINT NOT NULL,
    errors BYTEA,
    failures BIGINT NOT NULL
);
