-- The last instance a reindex walks: the service's highest instance id once the completion
-- grace has passed (NULL before). Instances stored after it were indexed by their stores, so a
-- reindex under a sustained load ends instead of chasing the newest instance.
ALTER TABLE dicom_operations ADD COLUMN end_id BIGINT;
