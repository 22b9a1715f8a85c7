"""Extended query tags against a real `hds up` on each index backend, with pydicom-data files:
a tag added to an empty service is indexed by the stores that follow; tags added after
instances are stored are indexed by a reindex operation (polled through `operations/{id}`),
whose per-instance errors are listed and disable the tag until it is enabled again; searches on
the tags go through dicomweb-client. A reindex whose process is killed is finished by the next
start. Every input limit answers its 4xx; a DICOM Data Reader reads tags but cannot change them."""

import time

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from conftest import HdsServer, fresh_instance, wait_for

DICOM = "https://dicom.healthcareapis.azure.com"
DICOM_DATA_READER = "e89c7a3c-2f64-4fa1-a847-3e4c9ba4283a"


def web(server) -> DICOMwebClient:
    return DICOMwebClient(url=server.url, headers={"Authorization": f"Bearer {server.token()}"})


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    if request.param == "sqlite":
        return "sqlite"
    cluster = request.getfixturevalue("postgres")
    return cluster.create_database(f"hds_eqt_{int(time.time() * 1000)}")


def add_tags(server, tags, expect=202):
    response = server.http.post(f"{server.url}/extendedquerytags", json=tags)
    assert response.status_code == expect, response.text
    return response.json()


def wait_operation(server, reference, timeout=60.0):
    """Polls the operation until it ends; returns its last state."""
    assert reference["href"] == f"{server.url}/operations/{reference['id']}"
    states = []

    def ended():
        response = server.http.get(reference["href"])
        assert response.status_code in (200, 202), response.text
        states.append(response.json())
        return states[-1]["status"] in ("succeeded", "failed")

    wait_for(ended, timeout=timeout, what="the reindex operation")
    return states[-1]


def uids(results, tag):
    return sorted(result[tag]["Value"][0] for result in results)


def test_extended_query_tags_end_to_end(tmp_path, backend):
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir, index=backend).start()
    try:
        client = web(server)
        # Added to an empty service: ready after its (empty) operation, indexed by every store.
        operation = wait_operation(server, add_tags(server, [{"path": "EchoTime", "level": "Instance"}]))
        assert operation["status"] == "succeeded" and operation["percentComplete"] == 100
        assert operation["type"] == "reindex"
        assert operation["resources"] == [f"{server.url}/extendedquerytags/00180081"]
        for field in ("operationId", "createdTime", "lastUpdatedTime"):
            assert operation[field], operation

        ct, mr, bad = fresh_instance("CT_small.dcm"), fresh_instance("MR_small.dcm"), fresh_instance("CT_small.dcm")
        bad.PatientSex = "X" * 20  # longer than CS allows: an error of this instance for PatientSex
        client.store_instances([ct, mr, bad])
        echo = client.search_for_instances(search_filters={"EchoTime": "240"})
        assert uids(echo, "00080018") == [mr.SOPInstanceUID]

        # Added after the instances: a reindex operation indexes them.
        reference = add_tags(server, [
            {"path": "PatientSex", "vr": "CS", "level": "Study"},
            {"path": "00080022", "level": "Series"},
            {"path": "SliceThickness", "vr": "DS", "level": "Instance"},
        ])
        assert set(reference) == {"id", "href"}
        adding = server.http.get(f"{server.url}/extendedquerytags/PatientSex").json()
        assert adding["status"] == "Adding"
        assert adding["operation"] == reference
        # Not queryable before it is ready.
        refused = server.http.get(f"{server.url}/studies", params={"PatientSex": "F"})
        assert refused.status_code == 400 and "Adding" in refused.json()["error"]["message"], refused.text
        # One operation at a time.
        busy = server.http.post(f"{server.url}/extendedquerytags", json=[{"path": "KVP", "level": "Instance"}])
        assert busy.status_code == 409, busy.text
        assert server.http.delete(f"{server.url}/extendedquerytags/PatientSex").status_code == 409
        operation = wait_operation(server, reference)
        assert operation["status"] == "succeeded" and operation["percentComplete"] == 100

        listed = server.http.get(f"{server.url}/extendedquerytags")
        assert listed.status_code == 200, listed.text
        by_path = {tag["path"]: tag for tag in listed.json()}
        assert set(by_path) == {"00080022", "00100040", "00180050", "00180081"}
        assert all(tag["status"] == "Ready" for tag in by_path.values())
        assert by_path["00180050"] == {"path": "00180050", "vr": "DS", "level": "Instance",
                                       "status": "Ready", "queryStatus": "Enabled"}
        # The over-long value: counted, listed with its instance, and the tag disabled.
        sex = by_path["00100040"]
        assert sex["queryStatus"] == "Disabled"
        assert sex["errors"] == {"count": 1, "href": f"{server.url}/extendedquerytags/00100040/errors"}
        errors = server.http.get(sex["errors"]["href"])
        assert errors.status_code == 200, errors.text
        [error] = errors.json()
        assert (error["studyInstanceUid"], error["seriesInstanceUid"], error["sopInstanceUid"]) == (
            bad.StudyInstanceUID, bad.SeriesInstanceUID, bad.SOPInstanceUID)
        assert "longer" in error["errorMessage"] and error["createdTime"].endswith("Z")
        disabled = server.http.get(f"{server.url}/studies", params={"PatientSex": "F"})
        assert disabled.status_code == 400 and "Disabled" in disabled.text
        enabled = server.http.patch(f"{server.url}/extendedquerytags/PatientSex", json={"queryStatus": "Enabled"})
        assert enabled.status_code == 200 and enabled.json()["queryStatus"] == "Enabled", enabled.text

        # Searches on the tags, by keyword or by tag, at their level or below.
        assert uids(client.search_for_studies(search_filters={"PatientSex": "F"}), "0020000D") == [mr.StudyInstanceUID]
        assert uids(client.search_for_studies(search_filters={"00100040": "O"}), "0020000D") == [ct.StudyInstanceUID]
        in_1997 = client.search_for_series(search_filters={"AcquisitionDate": "19970101-19971231",
                                                           "StudyInstanceUID": ct.StudyInstanceUID})
        assert uids(in_1997, "0020000E") == [ct.SeriesInstanceUID]
        # DS matches by value: "5" is CT's "5.000000"; includefield returns the stored value.
        thick = client.search_for_instances(search_filters={"SliceThickness": "5"}, fields=["SliceThickness"])
        assert uids(thick, "00080018") == sorted([ct.SOPInstanceUID, bad.SOPInstanceUID])
        assert all(float(result["00180050"]["Value"][0]) == 5.0 for result in thick)
        by_sex = client.search_for_instances(search_filters={"PatientSex": "F", "SliceThickness": "0.8"})
        assert uids(by_sex, "00080018") == [mr.SOPInstanceUID]
        # A tag of a lower level is refused at a higher one, as default attributes are.
        lower = server.http.get(f"{server.url}/studies", params={"SliceThickness": "5"})
        assert lower.status_code == 400, lower.text

        # A new store is indexed at once.
        later = fresh_instance("MR_small.dcm")
        client.store_instances([later])
        assert uids(client.search_for_studies(search_filters={"PatientSex": "F"}), "0020000D") == sorted(
            [mr.StudyInstanceUID, later.StudyInstanceUID])

        # Disable, then delete: the tag is gone from queries and from the list.
        patched = server.http.patch(f"{server.url}/extendedquerytags/00180050", json={"queryStatus": "Disabled"})
        assert patched.status_code == 200 and patched.json()["queryStatus"] == "Disabled"
        assert server.http.get(f"{server.url}/instances", params={"SliceThickness": "5"}).status_code == 400
        assert server.http.delete(f"{server.url}/extendedquerytags/SliceThickness").status_code == 204
        assert server.http.get(f"{server.url}/extendedquerytags/SliceThickness").status_code == 404
        assert server.http.get(f"{server.url}/instances", params={"SliceThickness": "5"}).status_code == 400

        check_limits(server)
        check_roles(server)
    finally:
        assert server.stop() == 0


def check_limits(server):
    """Each input limit: its status and a message saying what is wrong."""
    url = f"{server.url}/extendedquerytags"
    private = [{"path": f"0009{0x1000 + n:04X}", "vr": "LO", "privateCreator": "E2E", "level": "Study"}
               for n in range(129)]
    for body, status, says in [
        ({"path": "KVP", "level": "Instance"}, 400, "array"),
        ([], 400, "at least one"),
        (private, 400, "at most 128"),
        ([{"path": "NotAKeyword", "level": "Study"}], 400, "neither"),
        ([{"path": "00400275.00321060", "level": "Study"}], 400, "sequence"),
        ([{"path": "ReferencedStudySequence", "level": "Study"}], 400, "not supported"),
        ([{"path": "KVP", "vr": "LO", "level": "Instance"}], 400, "does not match"),
        ([{"path": "PatientName", "level": "Study"}], 400, "already supported by default"),
        ([{"path": "00091001", "vr": "LO", "level": "Study"}], 400, "privateCreator"),
        ([{"path": "KVP", "privateCreator": "E2E", "level": "Instance"}], 400, "privateCreator"),
        ([{"path": "KVP", "level": "Patient"}], 400, "Study, Series or Instance"),
        ([{"path": "KVP", "level": "Instance"}, {"path": "00180060", "level": "Series"}], 400, "more than once"),
        ([{"path": "KVP", "vr": 7, "level": "Instance"}], 400, "string"),
        ([{"path": "PatientSex", "level": "Study"}], 409, "already exists"),
    ]:
        response = server.http.post(url, json=body)
        assert response.status_code == status, (body, response.text)
        assert says in response.json()["error"]["message"], (body, response.text)
    # At most 128 per service: 3 exist, 126 more are one too many.
    too_many = server.http.post(url, json=private[:126])
    assert too_many.status_code == 409 and "at most 128" in too_many.text, too_many.text
    assert server.http.post(url, data="[", headers={"Content-Type": "application/json"}).status_code == 400
    assert server.http.post(url, data="[]", headers={"Content-Type": "text/plain"}).status_code == 415
    huge = server.http.post(url, data="[" + " " * 70_000 + "]", headers={"Content-Type": "application/json"})
    assert huge.status_code == 413, huge.text
    for method, path, params, body, status in [
        ("GET", "extendedquerytags/NotAKeyword", None, None, 400),
        ("GET", "extendedquerytags/KVP", None, None, 404),
        ("GET", "extendedquerytags", {"limit": "0"}, None, 400),
        ("GET", "extendedquerytags", {"limit": "201"}, None, 400),
        ("GET", "extendedquerytags", {"offset": "-1"}, None, 400),
        ("GET", "extendedquerytags", {"other": "1"}, None, 400),
        ("GET", "extendedquerytags/PatientSex/errors", {"limit": "1000"}, None, 400),
        ("GET", "extendedquerytags/KVP/errors", None, None, 404),
        ("PATCH", "extendedquerytags/PatientSex", None, {"queryStatus": "Paused"}, 400),
        ("PATCH", "extendedquerytags/PatientSex", None, ["Enabled"], 400),
        ("PATCH", "extendedquerytags/KVP", None, {"queryStatus": "Enabled"}, 404),
        ("DELETE", "extendedquerytags/KVP", None, None, 404),
        ("GET", "operations/not-an-operation", None, None, 404),
        ("GET", "operations/" + "0" * 32, None, None, 404),
        ("GET", "studies", {"NotAnAttribute": "x"}, None, 400),
        ("GET", "instances", {"EchoTime": "not-a-number"}, None, 400),
        ("GET", "instances", {"EchoTime": "9" * 100}, None, 400),
    ]:
        response = server.http.request(method, f"{server.url}/{path}", params=params, json=body)
        assert response.status_code == status, (method, path, params, body, response.text)
    listed = server.http.get(url, params={"limit": "1", "offset": "1"}).json()
    assert [tag["path"] for tag in listed] == ["00100040"]


def check_roles(server):
    """A DICOM Data Reader reads tags and operations; adding, changing and deleting them needs
    Azure's ManageExtendedQueryTags, which only DICOM Data Owner's `resources/*` grants."""
    from conftest import ArmClient
    from test_principals import graph_session, register_viewer

    arm = ArmClient(server)
    viewer = register_viewer(server, graph_session(server), "eqt-reader")
    arm.grant(viewer["sp"]["id"], arm.service_id(), DICOM_DATA_READER)
    reader = requests.Session()
    reader.headers["Authorization"] = f"Bearer {server.token(DICOM, viewer['app']['appId'], viewer['secret'])}"
    url = f"{server.url}/extendedquerytags"
    wait_for(lambda: reader.get(url).status_code == 200, timeout=15, what="the reader's role")
    assert reader.get(f"{url}/PatientSex").status_code == 200
    assert reader.get(f"{url}/PatientSex/errors").status_code == 200
    assert reader.post(url, json=[{"path": "KVP", "level": "Instance"}]).status_code == 403
    assert reader.patch(f"{url}/PatientSex", json={"queryStatus": "Disabled"}).status_code == 403
    assert reader.delete(f"{url}/PatientSex").status_code == 403
    anonymous = requests.get(url)
    assert anonymous.status_code == 401


def test_a_reindex_killed_midway_is_finished_by_the_next_start(tmp_path):
    """The operation cannot end within its completion grace (3 s) after it began, so a process
    killed half a second in leaves it unfinished, holding its lease; the next start takes the
    lease when it expires (10 s) and finishes from the cursor."""
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir).start()
    stored = [fresh_instance(name) for name in ("CT_small.dcm", "MR_small.dcm") * 30]
    try:
        web(server).store_instances(stored)
        reference = add_tags(server, [{"path": "StationName", "level": "Series"}])
        # Long enough for this process's worker to take the lease, well within the grace.
        time.sleep(0.5)
    finally:
        server.kill()
    server = HdsServer(data_dir).start()
    # The new process listens on another port: the operation's URL follows it.
    reference = {"id": reference["id"], "href": f"{server.url}/operations/{reference['id']}"}
    try:
        first = server.http.get(reference["href"]).json()
        assert first["status"] in ("notStarted", "running"), first
        started = time.monotonic()
        operation = wait_operation(server, reference, timeout=60)
        assert operation["status"] == "succeeded" and operation["percentComplete"] == 100
        print(f"reindex of {len(stored)} instances finished {time.monotonic() - started:.1f} s after the restart")
        found = web(server).search_for_series(search_filters={"StationName": "CT01_OC0"})
        assert len(found) == len(stored) // 2
    finally:
        assert server.stop() == 0
