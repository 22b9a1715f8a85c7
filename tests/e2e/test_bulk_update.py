"""Bulk update (`POST studies/$bulkUpdate`) against a real `hds up` on each index backend, with
pydicom-data files: 50 studies updated in one operation (timed: docs/benchmarks.md), then QIDO on
the new and the old name, WADO and metadata of the latest and (with `msdicom-request-original:
true`) the original versions, the change feed's `update` entries, a delete that takes originals
with it; an operation killed in the middle resumes after a restart; hostile bodies get Azure's
400s, 413 and 415, a second update while one runs 409, v1 404."""

import io
import time

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from conftest import HdsServer, blob_files, fresh_instance, wait_for

NEW_NAME = "Updated^Patient"
CHANGE = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": NEW_NAME}]},
    "00100020": {"vr": "LO", "Value": ["BULK-ID"]},
    "00081030": {"vr": "LO", "Value": ["Bulk updated"]},
}


def web(server) -> DICOMwebClient:
    return DICOMwebClient(url=server.url, headers={"Authorization": f"Bearer {server.token()}"})


def store_studies(server, count, per_study=1, name="CT_small.dcm"):
    """`count` new studies of `per_study` instances each; returns their datasets by study."""
    studies = {}
    batch = []
    for _ in range(count):
        first = fresh_instance(name)
        datasets = [first]
        for _ in range(per_study - 1):
            more = fresh_instance(name)
            more.StudyInstanceUID = first.StudyInstanceUID
            more.SeriesInstanceUID = first.SeriesInstanceUID
            datasets.append(more)
        studies[first.StudyInstanceUID] = datasets
        batch.extend(datasets)
    client = web(server)
    for start in range(0, len(batch), 25):
        stored = client.store_instances(batch[start:start + 25])
        assert len(stored.ReferencedSOPSequence) == len(batch[start:start + 25])
    return studies


def start_update(server, studies, change=CHANGE):
    response = server.http.post(f"{server.url}/studies/$bulkUpdate",
                                json={"studyInstanceUids": list(studies), "changeDataset": change})
    assert response.status_code == 202, response.text
    reference = response.json()
    assert set(reference) == {"id", "href"}
    assert reference["href"] == f"{server.url}/operations/{reference['id']}"
    return reference


def operation(server, reference):
    response = server.http.get(reference["href"])
    assert response.status_code in (200, 202), response.text
    state = response.json()
    running = state["status"] in ("notStarted", "running")
    assert response.status_code == (202 if running else 200), state
    return state


def wait_operation(server, reference, timeout=180.0):
    return wait_for(lambda: (lambda s: s if s["status"] in ("succeeded", "failed") else None)(
        operation(server, reference)), timeout=timeout, what="the update operation")


def parse_part10(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    if request.param == "sqlite":
        return "sqlite"
    cluster = request.getfixturevalue("postgres")
    return cluster.create_database(f"hds_bulkupdate_{int(time.time() * 1000)}")


def test_bulk_update_of_50_studies(tmp_path, backend):
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir, index=backend).start()
    try:
        studies = store_studies(server, 50)
        old_name = str(next(iter(studies.values()))[0].PatientName)
        blobs_before = len(blob_files(data_dir))

        began = time.monotonic()
        reference = start_update(server, studies)
        # One update at a time, as Azure.
        busy = server.http.post(f"{server.url}/studies/$bulkUpdate",
                                json={"studyInstanceUids": [next(iter(studies))], "changeDataset": CHANGE})
        state = wait_operation(server, reference)
        elapsed = time.monotonic() - began
        print(f"\nbulk update of 50 studies ({backend.split('/')[-1]}): {elapsed:.2f} s")
        if busy.status_code != 409:
            # The first had already ended: then the second ran too.
            assert busy.status_code == 202, busy.text
            wait_operation(server, busy.json())
        assert state["type"] == "update" and state["status"] == "succeeded", state
        assert state["percentComplete"] == 100
        assert state["results"] == {"studyProcessed": 50, "studyUpdated": 50, "studyFailed": 0,
                                    "instanceUpdated": 50, "errors": []}
        assert "resources" not in state

        client = web(server)
        # QIDO: the new name finds every study, the old one none.
        found = client.search_for_studies(search_filters={"PatientName": NEW_NAME}, get_remaining=True)
        assert {study["0020000D"]["Value"][0] for study in found} == set(studies)
        assert client.search_for_studies(search_filters={"PatientName": old_name}) == []
        assert len(client.search_for_studies(search_filters={"PatientID": "BULK-ID"}, get_remaining=True)) == 50

        # WADO and metadata: the latest version; the original with Azure's header.
        study, datasets = next(iter(studies.items()))
        original = datasets[0]
        instance_url = (f"{server.url}/studies/{study}/series/{original.SeriesInstanceUID}"
                        f"/instances/{original.SOPInstanceUID}")
        accept = {"Accept": "application/dicom; transfer-syntax=*"}
        latest = parse_part10(server.http.get(instance_url, headers=accept).content)
        assert str(latest.PatientName) == NEW_NAME and latest.StudyDescription == "Bulk updated"
        assert latest.SOPInstanceUID == original.SOPInstanceUID
        assert latest.PixelData == original.PixelData
        before = parse_part10(server.http.get(
            instance_url, headers={**accept, "msdicom-request-original": "true"}).content)
        assert str(before.PatientName) == old_name and before.PatientID == original.PatientID
        metadata = server.http.get(f"{instance_url}/metadata").json()[0]
        assert metadata["00100010"]["Value"][0]["Alphabetic"] == NEW_NAME
        original_metadata = server.http.get(f"{instance_url}/metadata",
                                            headers={"msdicom-request-original": "True"}).json()[0]
        assert original_metadata["00100010"]["Value"][0]["Alphabetic"] == old_name
        study_originals = server.http.get(f"{server.url}/studies/{study}/metadata",
                                          headers={"msdicom-request-original": "true"})
        assert study_originals.status_code == 200
        # Any other header value reads the latest version.
        assert server.http.get(f"{instance_url}/metadata", headers={"msdicom-request-original": "no"}
                               ).json()[0]["00100010"]["Value"][0]["Alphabetic"] == NEW_NAME

        # The change feed: an update entry per instance, its create entry replaced.
        feed = server.http.get(f"{server.url}/changefeed", params={"limit": 200}).json()
        updates = [entry for entry in feed if entry["Action"] == "update"]
        assert len({entry["SopInstanceUid"] for entry in updates}) == 50
        mine = [entry for entry in feed if entry["SopInstanceUid"] == original.SOPInstanceUID]
        assert mine[0]["Action"] == "create" and mine[0]["State"] == "replaced"
        assert mine[-1]["Action"] == "update" and mine[-1]["State"] == "current"
        assert mine[-1]["Metadata"]["00100010"]["Value"][0]["Alphabetic"] == NEW_NAME

        # Every instance has its original and its latest version; an update keeps both, not more.
        assert len(blob_files(data_dir)) == blobs_before + 50
        second = start_update(server, [study], {"00081030": {"vr": "LO", "Value": ["Again"]}})
        assert wait_operation(server, second)["results"]["instanceUpdated"] == 1
        assert len(blob_files(data_dir)) == blobs_before + 50
        again = parse_part10(server.http.get(instance_url, headers={**accept, "msdicom-request-original": "true"}).content)
        assert str(again.PatientName) == old_name, "the original is the first version"

        # Deleting the study removes the original and the latest version.
        assert server.http.delete(f"{server.url}/studies/{study}").status_code == 204
        assert len(blob_files(data_dir)) == blobs_before + 50 - 2
        gone = server.http.get(instance_url, headers={**accept, "msdicom-request-original": "true"})
        assert gone.status_code == 404
    finally:
        server.stop()


def test_an_update_resumes_after_a_restart(tmp_path):
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir).start()
    try:
        studies = store_studies(server, 20, per_study=3)
        reference = start_update(server, studies)
        wait_for(lambda: operation(server, reference)["percentComplete"] >= 10, timeout=60,
                 what="the update to begin")
        state = operation(server, reference)
        assert state["status"] == "running", state
        server.kill()
        server.start()
        state = wait_operation(server, reference)
        assert state["status"] == "succeeded", state
        assert state["results"]["studyProcessed"] == 20 and state["results"]["instanceUpdated"] == 60
        found = web(server).search_for_instances(search_filters={"PatientName": NEW_NAME}, get_remaining=True)
        assert len(found) == 60
        # Every instance's original is its first version, even those updated twice.
        study, datasets = next(iter(studies.items()))
        for dataset in datasets:
            url = (f"{server.url}/studies/{study}/series/{dataset.SeriesInstanceUID}"
                   f"/instances/{dataset.SOPInstanceUID}/metadata")
            first = server.http.get(url, headers={"msdicom-request-original": "true"}).json()[0]
            assert first["00100010"]["Value"][0]["Alphabetic"] == str(dataset.PatientName)
    finally:
        server.stop()


def test_bulk_update_refuses_hostile_requests(tmp_path):
    server = HdsServer(tmp_path / "data").start()
    try:
        study = next(iter(store_studies(server, 1)))
        url = f"{server.url}/studies/$bulkUpdate"

        def post(body, **kwargs):
            return server.http.post(url, json=body, **kwargs)

        def error(response, status=400):
            assert response.status_code == status, response.text
            return response.json()["error"]["message"]

        assert "50" in error(post({"studyInstanceUids": [f"1.2.{n}" for n in range(51)], "changeDataset": CHANGE}))
        error(post({"studyInstanceUids": [], "changeDataset": CHANGE}))
        error(post({"studyInstanceUids": ["x" * 65], "changeDataset": CHANGE}))
        error(post({"studyInstanceUids": [study, study], "changeDataset": CHANGE}))
        error(post({"studyInstanceUids": [study]}))
        error(post([study]))
        # Attributes: Azure's dataset with a FailedAttributesSequence, naming no value.
        refused = post({"studyInstanceUids": [study], "changeDataset": {
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "00100020": {"vr": "LO", "Value": ["SECRET-" + "9" * 64]},
            "00100030": {"vr": "DA", "Value": ["notadate"]},
        }})
        assert refused.status_code == 400, refused.text
        assert refused.headers["Content-Type"].startswith("application/dicom+json")
        comments = [item["00000902"]["Value"][0] for item in refused.json()["00741048"]["Value"]]
        assert len(comments) == 3 and not any("SECRET" in comment for comment in comments)
        # Size and media type.
        huge = {"studyInstanceUids": [study], "changeDataset": {"00104000": {"vr": "LT", "Value": ["a" * 70000]}}}
        assert server.http.post(url, json=huge).status_code == 413
        assert server.http.post(url, data=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415
        error(server.http.post(url, data=b"{not json", headers={"Content-Type": "application/json"}))
        # v1 has no bulk update (as Azure).
        v1 = server.url.rsplit("/", 1)[0] + "/v1/studies/$bulkUpdate"
        assert server.http.post(v1, json={"studyInstanceUids": [study], "changeDataset": CHANGE}).status_code == 404
        # Nothing was started: the study is as stored.
        assert web(server).search_for_studies(search_filters={"PatientName": NEW_NAME}) == []
        # A study that does not exist is processed and updates nothing.
        state = wait_operation(server, start_update(server, ["1.2.826.0.1.3680043.10.4242.1"]))
        assert state["status"] == "succeeded"
        assert state["results"]["studyProcessed"] == 1 and state["results"]["studyUpdated"] == 0
        # Nothing of the request reaches the log.
        assert "SECRET" not in server.logs() and NEW_NAME not in server.logs()
    finally:
        server.stop()
