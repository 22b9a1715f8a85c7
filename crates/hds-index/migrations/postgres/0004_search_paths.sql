-- A service's studies in id (store) order, so a study search without conditions reads one page
-- of them rather than sorting all of them. Searches with conditions are driven by the token
-- indexes instead (query.rs).
CREATE INDEX dicom_studies_service_id ON dicom_studies (service, id);
