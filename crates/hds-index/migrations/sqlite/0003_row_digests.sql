-- A keyed digest of what a study or series row says (its attributes and search tokens), so a
-- store that would write the same again skips the row. NULL for rows written before: they are
-- rewritten by their next store.
ALTER TABLE dicom_studies ADD COLUMN digest BLOB;
ALTER TABLE dicom_series ADD COLUMN digest BLOB;
