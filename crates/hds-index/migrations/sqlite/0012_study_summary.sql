-- What a study search reports besides the study's attributes, kept on the study's own row so a
-- page of results reads one row per study instead of an index range per count and a series row
-- per series: NumberOfStudyRelatedSeries and NumberOfStudyRelatedInstances (counts are not
-- patient data), maintained by the triggers below on every insert and delete, whichever code
-- path makes it; and ModalitiesInStudy, sealed (store.rs appends one sealed piece per distinct
-- modality). NULL modalities means "not known": the search reads the series instead.
-- (PostgreSQL keeps the modalities only: see its 0012.) SQLite has one writer at a time, so a
-- counter on the study row makes no store wait for another.
ALTER TABLE dicom_studies ADD COLUMN series_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE dicom_studies ADD COLUMN instance_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE dicom_studies ADD COLUMN modalities BLOB;

UPDATE dicom_studies SET
    series_count = (SELECT COUNT(*) FROM dicom_series se WHERE se.study_id = dicom_studies.id),
    instance_count = (SELECT COUNT(*) FROM dicom_instances i WHERE i.study_id = dicom_studies.id);

CREATE TRIGGER dicom_series_counted AFTER INSERT ON dicom_series BEGIN
    UPDATE dicom_studies SET series_count = series_count + 1 WHERE id = NEW.study_id;
END;
CREATE TRIGGER dicom_series_uncounted AFTER DELETE ON dicom_series BEGIN
    UPDATE dicom_studies SET series_count = series_count - 1 WHERE id = OLD.study_id;
END;
CREATE TRIGGER dicom_instances_counted AFTER INSERT ON dicom_instances BEGIN
    UPDATE dicom_studies SET instance_count = instance_count + 1 WHERE id = NEW.study_id;
END;
CREATE TRIGGER dicom_instances_uncounted AFTER DELETE ON dicom_instances BEGIN
    UPDATE dicom_studies SET instance_count = instance_count - 1 WHERE id = OLD.study_id;
END;
