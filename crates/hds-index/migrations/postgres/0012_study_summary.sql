-- ModalitiesInStudy kept on the study's own row, sealed (store.rs appends one sealed piece per
-- distinct modality when a series is created), so a page of study results reads one row per
-- study instead of every series of every study. NULL means "not known": the search reads the
-- series instead, as it does for every study stored before this column.
-- Unlike SQLite, the study's series and instance counts are not kept on the row: PostgreSQL's
-- stores run concurrently, one transaction per instance, and a counter on the study row would
-- make every store into a study wait for the one before it to commit (and deadlock two stores
-- of the same instance into different studies). They are counted when a search reads them.
ALTER TABLE dicom_studies ADD COLUMN modalities BYTEA;
