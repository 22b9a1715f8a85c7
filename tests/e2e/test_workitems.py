"""UPS-RS workitems against a real `hds up` on each index backend, over plain HTTP as Azure's
DICOM service serves them: create (UID in the dataset or in the URI), retrieve (never the
Transaction UID), search by several attributes, claim (IN PROGRESS), update with the owner's
Transaction UID (a wrong one refused), complete, request cancellation; a DICOM Data Reader
reads and searches but cannot create, update or change a workitem; hostile bodies and queries
answer their 4xx. Afterwards no byte at rest (the data dir, a pg_dump of the PostgreSQL index)
nor the server log holds the workitems' patient name, IDs or UIDs."""

import json
import os
import pathlib
import subprocess
import time

import pytest
import requests

from conftest import HdsServer, wait_for

DICOM = "https://dicom.healthcareapis.azure.com"
DICOM_DATA_READER = "e89c7a3c-2f64-4fa1-a847-3e4c9ba4283a"
DICOM_JSON = "application/dicom+json"
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"

# Markers that must never be readable at rest or in the log.
PATIENT_NAME = "Upsmarkfamily^Upsmarkgiven"
PATIENT_ID = "UPSMARKPID"
ACCESSION = "UPSMARKACC"
FIRST_UID = "1.2.826.0.1.3680043.10.4242.1"
SECOND_UID = "1.2.826.0.1.3680043.10.4242.2"
OWNER_UID = "1.2.826.0.1.3680043.10.4242.99"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    if request.param == "sqlite":
        return "sqlite"
    cluster = request.getfixturevalue("postgres")
    return cluster.create_database(f"hds_ups_{int(time.time() * 1000)}")


def workitem(uid=None, patient=PATIENT_NAME, patient_id=PATIENT_ID, accession=ACCESSION,
             start="20261204090000", station="CT01"):
    dataset = {
        "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
        "00741204": {"vr": "LO", "Value": ["CT chest"]},
        "00741210": {"vr": "SQ"},
        "00404025": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": [station]}}]},
        "00404026": {"vr": "SQ"},
        "00404027": {"vr": "SQ"},
        "00404005": {"vr": "DT", "Value": [start]},
        "00404018": {"vr": "SQ"},
        "00400400": {"vr": "LT"},
        "00404041": {"vr": "CS", "Value": ["READY"]},
        "00404021": {"vr": "SQ"},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": patient}]},
        "00100020": {"vr": "LO", "Value": [patient_id]},
        "00101002": {"vr": "SQ"},
        "00100030": {"vr": "DA"},
        "00100040": {"vr": "CS"},
        "00380010": {"vr": "LO"},
        "00380014": {"vr": "SQ"},
        "00081080": {"vr": "LO"},
        "00081084": {"vr": "SQ"},
        "0040A370": {"vr": "SQ", "Value": [{
            "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.10.4242.500"]},
            "00080050": {"vr": "SH", "Value": [accession]},
            "00401001": {"vr": "SH", "Value": ["RP-1"]},
        }]},
    }
    if uid:
        dataset["00080018"] = {"vr": "UI", "Value": [uid]}
    return dataset


def state_change(transaction, state):
    return {"00081195": {"vr": "UI", "Value": [transaction]}, "00741000": {"vr": "CS", "Value": [state]}}


PERFORMED = {
    "00741216": {"vr": "SQ", "Value": [{
        "00404028": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["CT01"]}}]},
        "00404050": {"vr": "DT", "Value": ["20261204100000"]},
        "00404019": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["W1"]}}]},
        "00404051": {"vr": "DT", "Value": ["20261204103000"]},
        "00404033": {"vr": "SQ", "Value": [{}]},
    }]},
}


class Ups:
    """The workitem routes of one service, as one caller."""

    def __init__(self, server, session):
        self.url = f"{server.url}/workitems"
        self.session = session

    def send(self, method, path="", body=None, params=None, raw=None, content_type=DICOM_JSON):
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        headers = {"Accept": DICOM_JSON}
        if data is not None:
            headers["Content-Type"] = content_type
        return self.session.request(method, self.url + path, data=data, params=params, headers=headers)

    def search(self, **params):
        response = self.send("GET", params=params)
        if response.status_code == 204:
            return []
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == DICOM_JSON
        return [item["00080018"]["Value"][0] for item in response.json()]

    def state(self, uid):
        response = self.send("GET", f"/{uid}")
        assert response.status_code == 200, response.text
        assert "00081195" not in response.json(), "the Transaction UID is never returned"
        return response.json()["00741000"]["Value"][0]


def pg_dump(cluster, database):
    command = [str(cluster.bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", database]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=True, capture_output=True).stdout


def test_workitem_lifecycle_roles_limits_and_nothing_in_plaintext(tmp_path, backend, request):
    server = HdsServer(tmp_path / "data", index=backend).start()
    try:
        ups = Ups(server, server.http)
        lifecycle(ups)
        reader_is_refused_writes(server)
        hostile_inputs(ups)
    finally:
        assert server.stop() == 0
    markers = [PATIENT_NAME, "Upsmarkfamily", "upsmarkfamily", "Upsmarkgiven", PATIENT_ID, ACCESSION,
               FIRST_UID, SECOND_UID, OWNER_UID]
    markers = [marker.encode() for marker in markers]
    found = []
    for path in sorted(pathlib.Path(server.data_dir).rglob("*")):
        if path.is_file():
            content = path.read_bytes()
            found += [(str(path), marker) for marker in markers if marker in content]
    assert found == [], f"plaintext at rest: {found}"
    if backend.startswith("postgres://"):
        dump = pg_dump(request.getfixturevalue("postgres"), backend.rsplit("/", 1)[1])
        assert b"dicom_workitems" in dump
        assert [marker for marker in markers if marker in dump] == [], "plaintext in the PostgreSQL index"
    log = pathlib.Path(server.log_path).read_bytes()
    assert [marker for marker in markers if marker in log] == [], "plaintext in the server log"


def lifecycle(ups):
    created = ups.send("POST", body=[workitem(FIRST_UID)])
    assert created.status_code == 201, created.text
    assert created.headers["Location"].endswith(f"/workitems/{FIRST_UID}")
    assert ups.send("POST", body=[workitem(FIRST_UID)]).status_code == 409
    second = ups.send("POST", f"?{SECOND_UID}", body=workitem(None, patient="Other^Person", patient_id="PID2",
                                                              accession="ACC2", start="20270110080000", station="MR02"))
    assert second.status_code == 201, second.text

    retrieved = ups.send("GET", f"/{FIRST_UID}")
    assert retrieved.status_code == 200
    assert retrieved.headers["Content-Type"] == DICOM_JSON
    assert retrieved.json()["00080016"]["Value"] == [UPS_PUSH]
    assert retrieved.json()["00100010"]["Value"] == [{"Alphabetic": PATIENT_NAME}]
    assert ups.state(FIRST_UID) == "SCHEDULED"
    assert ups.send("GET", "/1.2.3.404").status_code == 404

    # Search by several attributes (newest first).
    assert ups.search() == [SECOND_UID, FIRST_UID]
    assert ups.search(PatientName="upsmarkfam", fuzzymatching="true") == [FIRST_UID]
    assert ups.search(PatientID="PID2") == [SECOND_UID]
    assert ups.search(**{"ReferencedRequestSequence.AccessionNumber": ACCESSION}) == [FIRST_UID]
    assert ups.search(**{"0040A370.00401001": "RP-1"}) == [SECOND_UID, FIRST_UID]
    assert ups.search(ScheduledProcedureStepStartDateTime="20261201-20261231") == [FIRST_UID]
    assert ups.search(ScheduledProcedureStepStartDateTime="20270101-") == [SECOND_UID]
    assert ups.search(**{"ScheduledStationNameCodeSequence.CodeValue": "MR02"}) == [SECOND_UID]
    assert ups.search(ProcedureStepState="SCHEDULED", limit="1", offset="1") == [FIRST_UID]
    assert ups.search(PatientID="nobody") == []
    included = ups.send("GET", params={"PatientID": PATIENT_ID, "includefield": "all"}).json()[0]
    assert included["00741204"]["Value"] == ["CT chest"]

    # Claim; a second claim is refused, with the reason in a Warning header.
    claimed = ups.send("PUT", f"/{FIRST_UID}/state", body=state_change(OWNER_UID, "IN PROGRESS"))
    assert claimed.status_code == 200, claimed.text
    again = ups.send("PUT", f"/{FIRST_UID}/state", body=state_change("1.2.3.4", "IN PROGRESS"))
    assert again.status_code == 400
    assert again.headers["Warning"].startswith("299 ")
    assert ups.state(FIRST_UID) == "IN PROGRESS"
    assert ups.search(ProcedureStepState="IN PROGRESS") == [FIRST_UID]

    # Update with the Transaction UID; a wrong or missing one is refused.
    wrong = ups.send("POST", f"/{FIRST_UID}?1.2.3.4", body=PERFORMED)
    assert wrong.status_code == 400 and "Transaction UID" in wrong.headers["Warning"]
    assert ups.send("POST", f"/{FIRST_UID}", body=PERFORMED).status_code == 400
    updated = ups.send("POST", f"/{FIRST_UID}?{OWNER_UID}", body=PERFORMED)
    assert updated.status_code == 200, updated.text
    assert updated.headers["Content-Location"].endswith(f"/workitems/{FIRST_UID}")

    # Complete with the owner's UID only.
    assert ups.send("PUT", f"/{FIRST_UID}/state", body=state_change("1.2.3.4", "COMPLETED")).status_code == 400
    completed = ups.send("PUT", f"/{FIRST_UID}/state", body=state_change(OWNER_UID, "COMPLETED"))
    assert completed.status_code == 200, completed.text
    assert ups.state(FIRST_UID) == "COMPLETED"
    assert ups.send("POST", f"/{FIRST_UID}?{OWNER_UID}", body=PERFORMED).status_code == 400

    # Cancellation requests: a scheduled workitem is canceled, a completed one is a conflict.
    cancel = ups.send("POST", f"/{SECOND_UID}/cancelrequest",
                      body={"00741238": {"vr": "LT", "Value": ["patient transferred"]}})
    assert cancel.status_code == 202, cancel.text
    assert ups.state(SECOND_UID) == "CANCELED"
    again = ups.send("POST", f"/{SECOND_UID}/cancelrequest")
    assert again.status_code == 409 and "CANCELED" in again.headers["Warning"]
    assert ups.send("POST", f"/{FIRST_UID}/cancelrequest").status_code == 409
    assert ups.send("POST", "/1.2.3.404/cancelrequest").status_code == 404


def reader_is_refused_writes(server):
    from conftest import ArmClient
    from test_principals import graph_session, register_viewer

    arm = ArmClient(server)
    viewer = register_viewer(server, graph_session(server), "ups-reader")
    arm.grant(viewer["sp"]["id"], arm.service_id(), DICOM_DATA_READER)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {server.token(DICOM, viewer['app']['appId'], viewer['secret'])}"
    reader = Ups(server, session)
    wait_for(lambda: reader.send("GET", f"/{FIRST_UID}").status_code == 200, timeout=15, what="the reader's role")
    assert reader.search(PatientID=PATIENT_ID) == [FIRST_UID]
    third = "1.2.826.0.1.3680043.10.4242.3"
    for method, path, body in [
        ("POST", "", workitem(third)),
        ("POST", f"?{third}", workitem(None)),
        ("POST", f"/{FIRST_UID}?{OWNER_UID}", PERFORMED),
        ("PUT", f"/{FIRST_UID}/state", state_change(OWNER_UID, "CANCELED")),
        ("POST", f"/{SECOND_UID}/cancelrequest", None),
    ]:
        response = reader.send(method, path, body=body)
        assert response.status_code == 403, (method, path, response.text)
    assert server.http.get(f"{server.url}/workitems/{third}").status_code == 404
    assert requests.get(f"{server.url}/workitems").status_code == 401


def hostile_inputs(ups):
    deep = {}
    for _ in range(12):
        deep = {"0040A730": {"vr": "SQ", "Value": [deep]}}
    too_many_values = {"00100020": {"vr": "LO", "Value": ["x"] * 25_000}}
    for raw, status in [
        (b"{not json", 400),
        (b"[]", 400),
        (json.dumps([workitem("1.2.3.10"), workitem("1.2.3.11")]).encode(), 400),
        (json.dumps(deep).encode(), 400),
        (json.dumps(too_many_values).encode(), 400),
        (json.dumps({"00100010": {"vr": "PN", "BulkDataURI": "http://elsewhere/x"}}).encode(), 400),
        (json.dumps({**workitem("1.2.3.12"), "00741000": {"vr": "CS", "Value": ["COMPLETED"]}}).encode(), 400),
        (json.dumps({**workitem("1.2.3.13"), "00081195": {"vr": "UI", "Value": ["1.2.3"]}}).encode(), 400),
        # A multi-byte character across a date-time's eighth byte (found by fuzzing).
        (json.dumps({**workitem("1.2.3.15"), "00404005": {"vr": "DT", "Value": ["2026120\u043bT0000"]}}).encode(), 400),
        (b" " * (2 * 1024 * 1024), 413),
    ]:
        response = ups.send("POST", raw=raw)
        assert response.status_code == status, (raw[:60], response.status_code, response.text[:200])
    assert ups.send("POST", raw=json.dumps(workitem("1.2.3.14")), content_type="text/plain").status_code == 415
    for params in [
        {"PatientSex": "F"},
        {"PatientID": ""},
        {"PatientID": "x" * 300},
        {"PatientName": "Ups*"},
        {"fuzzymatching": "sometimes"},
        {"limit": "0"},
        {"limit": "201"},
        {"offset": "-1"},
        {"includefield": "NotAnAttribute"},
        {"ScheduledProcedureStepStartDateTime": "20261204093000-"},
        {"ScheduledProcedureStepStartDateTime": "-"},
        {"ScheduledProcedureStepStartDateTime": "2026120\u043bT0000"},
        {f"x{n}": "1" for n in range(70)},
    ]:
        response = ups.send("GET", params=params)
        assert response.status_code == 400, (params, response.text[:200])
    for method, path, body in [
        ("GET", "/not-a-uid", None),
        ("POST", "?1.2.3&more=1", workitem(None)),
        ("PUT", f"/{FIRST_UID}/state", {"00741000": {"vr": "CS", "Value": ["COMPLETED"]}}),
        ("PUT", f"/{FIRST_UID}/state", state_change("1.2.3", "SCHEDULED")),
        ("PUT", f"/{FIRST_UID}/state", state_change("not a uid", "IN PROGRESS")),
    ]:
        response = ups.send(method, path, body=body)
        assert response.status_code == 400, (method, path, response.text[:200])
