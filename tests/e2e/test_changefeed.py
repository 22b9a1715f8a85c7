"""The change feed and upsert against a real `hds up` on each index backend, with pydicom-data
files: stores (dicomweb-client), an upsert (`PUT`, plain HTTP: dicomweb-client only POSTs) and
deletes show in the feed in commit order, with states that follow, and the sequence numbers
carry on across a restart. Every parameter's limit answers 400."""

import io
import time

import pytest
from dicomweb_client.api import DICOMwebClient

from conftest import HdsServer, blob_files, fresh_instance

PATIENT_ID = "00100020"


def web(server) -> DICOMwebClient:
    return DICOMwebClient(url=server.url, headers={"Authorization": f"Bearer {server.token()}"})


def stow_body(*datasets):
    boundary = "changefeed-boundary"
    body = b""
    for dataset in datasets:
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    return body, headers


def feed(server, version="v2", **params):
    url = server.url.rsplit("/", 1)[0] + f"/{version}/changefeed"
    response = server.http.get(url, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def summary(entries):
    return [(e["Sequence"], e["Action"], e["State"], e["SopInstanceUid"]) for e in entries]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    if request.param == "sqlite":
        return "sqlite"
    cluster = request.getfixturevalue("postgres")
    name = f"hds_changefeed_{int(time.time() * 1000)}"
    return cluster.create_database(name)


def test_change_feed_follows_stores_upserts_and_deletes_across_a_restart(tmp_path, backend):
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir, index=backend).start()
    try:
        latest = server.http.get(f"{server.url}/changefeed/latest")
        assert latest.status_code == 204, latest.text

        ct, mr = fresh_instance("CT_small.dcm"), fresh_instance("MR_small.dcm")
        stored = web(server).store_instances([ct, mr])
        assert len(stored.ReferencedSOPSequence) == 2

        entries = feed(server)
        assert summary(entries) == [(1, "create", "current", ct.SOPInstanceUID),
                                    (2, "create", "current", mr.SOPInstanceUID)]
        assert entries[0]["StudyInstanceUid"] == ct.StudyInstanceUID
        assert entries[0]["SeriesInstanceUid"] == ct.SeriesInstanceUID
        assert entries[1]["Metadata"][PATIENT_ID]["Value"] == [mr.PatientID]
        assert entries[0]["Timestamp"].endswith("Z")

        # POST refuses a stored instance; PUT replaces it, and the feed says so.
        mr.PatientID = "UPSERTED"
        body, headers = stow_body(mr)
        refused = server.http.post(f"{server.url}/studies", data=body, headers=headers)
        assert refused.status_code == 409, refused.text
        assert refused.json()["00081198"]["Value"][0]["00081197"]["Value"] == [45070]
        blobs_before = len(blob_files(data_dir))
        replaced = server.http.put(f"{server.url}/studies/{mr.StudyInstanceUID}", data=body, headers=headers)
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["00081199"]["Value"][0]["00081155"]["Value"] == [mr.SOPInstanceUID]
        # The replaced instance's blob went with its row: as many blobs as before.
        assert len(blob_files(data_dir)) == blobs_before
        metadata = web(server).retrieve_instance_metadata(
            mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID)
        assert metadata[PATIENT_ID]["Value"] == ["UPSERTED"]
        # A PUT of a new instance stores it.
        extra = fresh_instance("CT_small.dcm")
        body, headers = stow_body(extra)
        created = server.http.put(f"{server.url}/studies", data=body, headers=headers)
        assert created.status_code == 200, created.text

        entries = feed(server)
        assert summary(entries) == [(1, "create", "current", ct.SOPInstanceUID),
                                    (2, "create", "replaced", mr.SOPInstanceUID),
                                    (3, "create", "current", mr.SOPInstanceUID),
                                    (4, "create", "current", extra.SOPInstanceUID)]
        assert entries[1]["Metadata"] is None
        assert entries[2]["Metadata"][PATIENT_ID]["Value"] == ["UPSERTED"]
    finally:
        assert server.stop() == 0

    # Across a restart the feed is the same and its sequences carry on.
    server = HdsServer(data_dir, index=backend).start()
    try:
        assert summary(feed(server)) == summary(entries)
        deleted = server.http.delete(f"{server.url}/studies/{ct.StudyInstanceUID}")
        assert deleted.status_code == 204, deleted.text
        entries = feed(server)
        assert summary(entries) == [(1, "create", "deleted", ct.SOPInstanceUID),
                                    (2, "create", "replaced", mr.SOPInstanceUID),
                                    (3, "create", "current", mr.SOPInstanceUID),
                                    (4, "create", "current", extra.SOPInstanceUID),
                                    (5, "delete", "deleted", ct.SOPInstanceUID)]
        # A delete entry keeps the UIDs (a copy can follow it) but no metadata.
        assert entries[4]["StudyInstanceUid"] == ct.StudyInstanceUID
        assert entries[4]["Metadata"] is None
        latest = server.http.get(f"{server.url}/changefeed/latest", params={"includemetadata": "false"})
        assert latest.status_code == 200, latest.text
        assert latest.json()["Sequence"] == 5

        # v2 pages and windows; v1 reads sequences after its offset.
        assert [e["Sequence"] for e in feed(server, offset=1, limit=2)] == [2, 3]
        assert all(e["Metadata"] is None for e in feed(server, includemetadata="false"))
        first, last = entries[0]["Timestamp"], entries[4]["Timestamp"]
        assert feed(server, endTime=first) == []
        assert 5 in [e["Sequence"] for e in feed(server, startTime=last)]
        assert [e["Sequence"] for e in feed(server, "v1", offset=1, limit=2)] == [2, 3]
        assert [e["Sequence"] for e in feed(server, "v1")] == [1, 2, 3, 4, 5]
        assert feed(server, "v1", offset=5) == []

        # Every limit answers 400, naming what is wrong.
        v2 = f"{server.url}/changefeed"
        v1 = server.url.rsplit("/", 1)[0] + "/v1/changefeed"
        for url, params, says in [
            (v2, {"limit": "201"}, "limit"),
            (v2, {"limit": "0"}, "limit"),
            (v2, {"offset": "-1"}, "offset"),
            (v2, {"offset": "ten"}, "offset"),
            (v2, {"startTime": "not-a-time"}, "startTime"),
            (v2, {"startTime": "2024-01-02T00:00:00Z", "endTime": "2024-01-01T00:00:00Z"}, "before endTime"),
            (v2, {"includemetadata": "maybe"}, "true or false"),
            (v2, {"PatientID": "x"}, "unknown"),
            (v2, {"limit": "9" * 100}, "longer than"),
            (v1, {"limit": "101"}, "limit"),
            (v1, {"startTime": "2024-01-01T00:00:00Z"}, "unknown"),
            (f"{v2}/latest", {"limit": "1"}, "unknown"),
        ]:
            response = server.http.get(url, params=params)
            assert response.status_code == 400, (params, response.text)
            assert says in response.json()["error"]["message"], (params, response.text)
        too_many = server.http.get(v2 + "?" + "&".join(f"p{n}=1" for n in range(20)))
        assert too_many.status_code == 400, too_many.text
    finally:
        assert server.stop() == 0
