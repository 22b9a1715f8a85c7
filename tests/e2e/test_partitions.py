"""End to end: data partitions, as Azure's DICOM service v2 has them. A DICOM service created
with `properties.enableDataPartitions: true` (plain ARM HTTP) serves its data under
`{serviceUrl}/v2/partitions/{name}/`; the real `dicomweb-client` pointed at a partition's base
URL stores, searches, retrieves and deletes there, on pydicom-data files; the same UIDs live
independently in two partitions; `GET partitions` lists them; the change feed (one per service)
names each entry's partition; the property cannot be changed afterwards; hostile names are
refused; and nothing of a partition's data is in plaintext at rest. On SQLite and PostgreSQL."""

import http.client
import json
import sqlite3

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from requests.exceptions import HTTPError

from conftest import ArmClient, HdsServer, fresh_instance, read, dicom_file, store

FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"]


@pytest.fixture
def world(any_index, tmp_path):
    server = HdsServer(tmp_path / "data", index=any_index).start()
    try:
        yield server, ArmClient(server)
    finally:
        assert server.stop() == 0


def partitioned_service(arm: ArmClient, name: str) -> str:
    """Creates a DICOM service with data partitions; its `{serviceUrl}/v2`."""
    created = arm.ok("PUT", arm.service_id(service=name),
                     {"location": "local", "properties": {"enableDataPartitions": True}})
    assert created["properties"]["enableDataPartitions"] is True
    return created["properties"]["serviceUrl"] + "/v2"


def client(server, url) -> DICOMwebClient:
    return DICOMwebClient(url=url, headers={"Authorization": f"Bearer {server.token()}"})


def error_code(response: requests.Response) -> str:
    return response.json()["error"]["code"]


def test_partitions_hold_the_same_uids_independently(world):
    server, arm = world
    base = partitioned_service(arm, "partitioned")
    a, b = client(server, f"{base}/partitions/clinic-a"), client(server, f"{base}/partitions/clinic-b")
    datasets = [read(dicom_file(name)) for name in FILES]
    # The same files, UIDs unchanged, into both partitions: the first store creates each.
    for web in (a, b):
        response = web.store_instances(datasets)
        assert len(response.ReferencedSOPSequence) == len(FILES)
        assert "FailedSOPSequence" not in response
    retrieve_url = response.ReferencedSOPSequence[0].RetrieveURL
    assert "/v2/partitions/clinic-b/studies/" in retrieve_url, retrieve_url

    for dataset in datasets:
        study, series, sop = dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
        for web in (a, b):
            found = web.search_for_studies(search_filters={"StudyInstanceUID": study})
            assert [s["0020000D"]["Value"] for s in found] == [[study]]
            instances = web.search_for_instances(study_instance_uid=study, series_instance_uid=series)
            assert [i["00080018"]["Value"][0] for i in instances] == [sop]
            got = web.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
            assert got.SOPInstanceUID == sop
            assert got.PixelData == dataset.PixelData
            assert web.retrieve_instance_metadata(study, series, sop)["00080018"]["Value"] == [sop]

    # A delete in one partition leaves the other's copy.
    gone = datasets[0]
    a.delete_study(gone.StudyInstanceUID)
    assert a.search_for_studies(search_filters={"StudyInstanceUID": gone.StudyInstanceUID}) == []
    assert len(b.search_for_studies(search_filters={"StudyInstanceUID": gone.StudyInstanceUID})) == 1
    with pytest.raises(HTTPError) as refused:
        a.retrieve_study(gone.StudyInstanceUID)
    assert refused.value.response.status_code == 404
    assert b.retrieve_study(gone.StudyInstanceUID)[0].SOPInstanceUID == gone.SOPInstanceUID

    # The partitions, in Azure's shape, the default first.
    listed = server.http.get(f"{base}/partitions")
    assert listed.status_code == 200, listed.text
    assert [p["partitionName"] for p in listed.json()] == ["Microsoft.Default", "clinic-a", "clinic-b"]
    assert listed.json()[0]["partitionKey"] == 1
    assert all(set(p) == {"partitionKey", "partitionName", "createdDate"} for p in listed.json())

    # The change feed is the service's, each entry naming its partition.
    feed = server.http.get(f"{base}/changefeed", params={"includemetadata": "false"})
    assert feed.status_code == 200, feed.text
    entries = [(e["Action"], e["PartitionName"], e["SopInstanceUid"]) for e in feed.json()]
    creates = [("create", p, d.SOPInstanceUID) for p in ("clinic-a", "clinic-b") for d in datasets]
    assert entries == creates + [("delete", "clinic-a", gone.SOPInstanceUID)]

    # Routes without a partition are refused while partitions are on; the change feed is not a
    # partition route.
    plain = server.http.get(f"{base}/studies")
    assert plain.status_code == 400 and error_code(plain) == "DataPartitionsMissingPartition", plain.text
    assert server.http.get(f"{base}/partitions/clinic-a/changefeed").status_code == 404
    # A read does not create a partition.
    unknown = server.http.get(f"{base}/partitions/clinic-c/studies")
    assert unknown.status_code == 400 and error_code(unknown) == "DataPartitionNotFound", unknown.text
    # Bulk update is not served under a partition yet: a clear 400, and no partition created.
    update = {"studyInstanceUids": [datasets[1].StudyInstanceUID],
              "changeDataset": {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Changed"}]}}}
    for spelling in ("$bulkUpdate", "$bulkupdate"):
        refused = server.http.post(f"{base}/partitions/clinic-a/studies/{spelling}", json=update)
        assert refused.status_code == 400 and error_code(refused) == "BadRequest", refused.text
        assert "not supported under a data partition" in refused.json()["error"]["message"]
        unknown = server.http.post(f"{base}/partitions/clinic-c/studies/{spelling}", json=update)
        assert unknown.status_code == 400 and error_code(unknown) == "DataPartitionNotFound", unknown.text
    listed = server.http.get(f"{base}/partitions").json()
    assert "clinic-c" not in [p["partitionName"] for p in listed]


def test_hostile_partition_names_are_refused(world):
    server, arm = world
    base = partitioned_service(arm, "hostile")
    dataset = fresh_instance()
    for name in ("a" * 65, "...", "a%2Fb", "%2E%2E", "a%00b", "a%20b", "a$b", "%C3%A9", "a;b"):
        response = server.http.get(f"{base}/partitions/{name}/studies")
        assert response.status_code == 400, (name, response.status_code, response.text)
        assert error_code(response) == "InvalidPartitionName", (name, response.text)
        assert name not in response.json()["error"]["message"], name
    # Raw `.` and `..` segments (requests would resolve them away) are names, refused as such.
    path = base.removeprefix(server.base)
    for name in ("..", "."):
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        try:
            connection.request("GET", f"{path}/partitions/{name}/studies",
                               headers={"Authorization": f"Bearer {server.token()}"})
            response = connection.getresponse()
            body = json.loads(response.read())
        finally:
            connection.close()
        assert response.status == 400 and body["error"]["code"] == "InvalidPartitionName", (name, body)
    # The longest name is fine, and a store creates it.
    store(server, dataset, f"{base}/partitions/{'p' * 64}")
    assert [p["partitionName"] for p in server.http.get(f"{base}/partitions").json()][-1] == "p" * 64


def test_the_arm_property_is_set_at_creation_only(world):
    server, arm = world
    plain_id = arm.service_id(service="plainsvc")
    created = arm.ok("PUT", plain_id, {"location": "local"})
    assert created["properties"]["enableDataPartitions"] is False
    url = created["properties"]["serviceUrl"] + "/v2"
    # Without partitions, the partition routes answer as Azure's do.
    listed = server.http.get(f"{url}/partitions")
    assert listed.status_code == 400 and error_code(listed) == "DataPartitionsFeatureDisabled", listed.text
    routed = server.http.get(f"{url}/partitions/p1/studies")
    assert routed.status_code == 400 and error_code(routed) == "DataPartitionsFeatureDisabled", routed.text
    assert server.http.get(f"{url}/studies").status_code in (200, 204)

    # Turning partitions on afterwards, or off once on, is refused; the same PUT again is fine.
    refused = arm.request("PUT", plain_id, {"location": "local", "properties": {"enableDataPartitions": True}})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "DataPartitionsCannotBeChanged"
    partitioned_id = arm.service_id(service="partsvc")
    arm.ok("PUT", partitioned_id, {"location": "local", "properties": {"enableDataPartitions": True}})
    refused = arm.request("PUT", partitioned_id, {"location": "local", "properties": {"enableDataPartitions": False}})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "DataPartitionsCannotBeChanged"
    again = arm.ok("PUT", partitioned_id, {"location": "local"})
    assert again["properties"]["enableDataPartitions"] is True
    wrong = arm.request("PUT", arm.service_id(service="wrongsvc"),
                        {"location": "local", "properties": {"enableDataPartitions": "yes"}})
    assert wrong.status_code == 400, wrong.text

    # The seed's service (no property) has none, and its data routes work as before.
    seed = arm.get(arm.service_id())
    assert seed["properties"]["enableDataPartitions"] is False


def test_a_partitions_data_is_sealed_at_rest_and_goes_with_its_service(world):
    server, arm = world
    base = partitioned_service(arm, "sealedsvc")
    dataset = fresh_instance()
    marker = "PartitionMarker^Zyx"
    dataset.PatientName = marker
    store(server, dataset, f"{base}/partitions/sealed-p")
    if server.index == "sqlite":
        for path in server.data_dir.rglob("*"):
            if path.is_file():
                assert marker.encode() not in path.read_bytes(), path
    # Deleting the service removes its partitions' data with it (crypto-shredding first).
    deleted = arm.request("DELETE", arm.service_id(service="sealedsvc"))
    assert deleted.status_code in (200, 202, 204), deleted.text
    assert server.http.get(f"{base}/partitions/sealed-p/studies").status_code == 404
    if server.index == "sqlite":
        database = sqlite3.connect(server.data_dir / "index.db")
        try:
            for table, column in (("dicom_partitions", "scope"), ("dicom_instances", "service"),
                                  ("dicom_studies", "service"), ("dicom_study_keys", "service")):
                (left,) = database.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} LIKE '%#%'").fetchone()
                assert left == 0, table
        finally:
            database.close()
    recreated = partitioned_service(arm, "sealedsvc")
    listed = server.http.get(f"{recreated}/partitions")
    assert [p["partitionName"] for p in listed.json()] == ["Microsoft.Default"]
