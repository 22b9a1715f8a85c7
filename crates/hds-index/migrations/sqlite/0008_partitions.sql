-- Data partitions of a DICOM service (Azure's partitions/{name} routes). A partition's rows in
-- every other table are filed under its scope (`{service}#{name}`) in their service column, so
-- existing queries isolate partitions as they isolate services, and the default partition keeps
-- the service's own value: a service without partitions has no row here. Names are
-- configuration chosen by the customer, never taken from an instance.
CREATE TABLE dicom_partitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    UNIQUE (service, name)
);

-- The partition of a change feed entry: the feed is one per service, across its partitions.
-- NULL for the default partition.
ALTER TABLE dicom_changefeed ADD COLUMN partition_name TEXT;
