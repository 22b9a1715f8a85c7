"""Tenancy end to end: a DICOM service's data belongs to its full resource id. A principal with
Contributor on another resource group cannot take a workspace name that is in use (409), and so
cannot create a look-alike `default/dicom` whose deletion would crypto-shred the original; a
move keeps a service's data (also across a restart); deleting one service leaves another of the
same service name in another workspace intact; an index row given another instance's blob is
refused, never served. A real `hds up` throughout."""

import re
import sqlite3
import uuid

import requests

from conftest import ArmClient, ExternalIssuer, HdsServer, assert_readable, fresh_instance, retrieve, store

CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
ISSUER = "https://login.example.org/attacker/v2.0"
MANAGEMENT = "https://management.azure.com"
DICOM = "https://dicom.healthcareapis.azure.com"


class ExternalPrincipal:
    """A user of an external OpenID issuer that hds trusts by configuration: a principal that
    holds only the roles the test assigns it."""

    def __init__(self, directory):
        self.issuer = ExternalIssuer(directory, ISSUER, kid="attacker-1")
        self.oid = str(uuid.uuid4())
        # The id hds gives this external subject (its own namespace, never a local principal's).
        self.principal_id = self.issuer.principal_id(self.oid)

    def flag(self):
        return self.issuer.flag()

    def token(self, audience: str) -> str:
        return self.issuer.token(self.issuer.user_claims(audience, self.oid))


def stow_bytes(server, service_url, dataset) -> bytes:
    """Stores one instance; returns the exact bytes sent."""
    import io

    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    sent = buffer.getvalue()
    boundary = "hds-tenancy-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + sent
            + f"\r\n--{boundary}--\r\n".encode())
    response = server.http.post(
        f"{service_url}/studies", data=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text
    return sent


def retrieved_bytes(server, service_url, dataset) -> tuple:
    """WADO-RS of one instance in its stored transfer syntax: (status, the part's exact bytes)."""
    response = server.http.get(
        f"{service_url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
        f"/instances/{dataset.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    if response.status_code != 200:
        return response.status_code, None
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["Content-Type"]).group(1).encode()
    body = response.content
    start = body.index(b"\r\n\r\n", body.index(b"--" + boundary)) + 4
    end = body.index(b"\r\n--" + boundary, start)
    return 200, body[start:end]


def assert_served(server, service_url, dataset, sent: bytes):
    status, payload = retrieved_bytes(server, service_url, dataset)
    assert status == 200, f"{service_url}: {status}"
    assert payload == sent, "the instance must come back byte-identical"


def platform_service(arm, group, workspace, service="dicom") -> str:
    """A workspace and a DICOM service under a platform-managed key; returns its data-plane URL."""
    arm.ok("PUT", arm.workspace_id(workspace, group), {"location": "local"})
    created = arm.ok("PUT", arm.service_id(workspace, service, group), {"location": "local"})
    return created["properties"]["serviceUrl"] + "/v2"


def test_contributor_elsewhere_cannot_shadow_or_shred_a_service(tmp_path):
    attacker = ExternalPrincipal(tmp_path)
    server = HdsServer(tmp_path / "data", extra_args=attacker.flag()).start()
    try:
        arm = ArmClient(server)
        victim_url = server.url
        dataset = fresh_instance()
        sent = stow_bytes(server, victim_url, dataset)
        assert_served(server, victim_url, dataset, sent)

        # The attacker: Contributor on a resource group of its own, nothing else.
        arm.put_group("attacker")
        assignment = f"{arm.group('attacker')}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}"
        arm.ok("PUT", assignment, {"properties": {
            "roleDefinitionId": f"{arm.subscription}/providers/Microsoft.Authorization/roleDefinitions/{CONTRIBUTOR}",
            "principalId": attacker.principal_id, "principalType": "User"}}, api_version="2022-04-01")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {attacker.token(MANAGEMENT)}"

        def as_attacker(method, path, body=None):
            return session.request(method, f"{server.base}{path}?api-version=2023-06-01-preview", json=body)

        # Its rights are real: a workspace of another name in its group is created.
        own = as_attacker("PUT", arm.workspace_id("attackerws", "attacker"), {"location": "local"})
        assert own.status_code in (200, 201), own.text

        # The victim's workspace name is taken, in any spelling: 409 with an ARM error body.
        for name in ("default", "DEFAULT", "Default"):
            taken = as_attacker("PUT", arm.workspace_id(name, "attacker"), {"location": "local"})
            assert taken.status_code == 409, taken.text
            error = taken.json()["error"]
            assert error["code"] == "WorkspaceNameNotAvailable", error
            assert error["message"]
        # Nothing was stored: the look-alike service cannot be created under it, nor deleted.
        assert as_attacker("GET", arm.workspace_id("default", "attacker")).status_code == 404
        shadow = as_attacker("PUT", arm.service_id("default", "dicom", "attacker"), {"location": "local"})
        assert shadow.status_code >= 400, shadow.text
        as_attacker("DELETE", arm.service_id("default", "dicom", "attacker"))
        as_attacker("DELETE", arm.workspace_id("default", "attacker"))
        # Nor may it touch the original.
        assert as_attacker("DELETE", arm.service_id()).status_code == 403

        # The victim's data is still there, byte for byte, and still only the victim's.
        assert_served(server, victim_url, dataset, sent)
        with_attacker_token = requests.get(f"{victim_url}/studies",
                                           headers={"Authorization": f"Bearer {attacker.token(DICOM)}"})
        assert with_attacker_token.status_code == 403, with_attacker_token.text
    finally:
        assert server.stop() == 0


def test_a_move_keeps_a_services_data_across_a_restart(tmp_path):
    server = HdsServer(tmp_path / "data").start()
    try:
        arm = ArmClient(server)
        arm.put_group("source")
        arm.put_group("target")
        url = platform_service(arm, "source", "movingws")
        dataset = fresh_instance()
        sent = stow_bytes(server, url, dataset)

        moved = arm.request("POST", f"{arm.group('source')}/moveResources",
                            {"resources": [arm.workspace_id("movingws", "source")],
                             "targetResourceGroup": arm.group("target")}, api_version="2021-04-01")
        assert moved.status_code in (200, 202, 204), moved.text
        assert arm.request("GET", arm.service_id("movingws", "dicom", "source")).status_code == 404
        assert arm.get(arm.service_id("movingws", "dicom", "target"))["properties"]["serviceUrl"] + "/v2" == url
        assert_served(server, url, dataset, sent)

        # The name moved with the workspace: the old group cannot take it back.
        again = arm.request("PUT", arm.workspace_id("movingws", "source"), {"location": "local"})
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "WorkspaceNameNotAvailable"

        assert server.stop() == 0
        server.start()
        assert_served(server, url, dataset, sent)
    finally:
        assert server.stop() == 0


def test_deleting_a_service_leaves_another_of_the_same_name(tmp_path):
    server = HdsServer(tmp_path / "data").start()
    try:
        arm = ArmClient(server)
        arm.put_group("first")
        arm.put_group("second")
        first_url = platform_service(arm, "first", "wsfirst")
        second_url = platform_service(arm, "second", "wssecond")
        first, second = fresh_instance(), fresh_instance()
        stow_bytes(server, first_url, first)
        second_sent = stow_bytes(server, second_url, second)

        deleted = arm.request("DELETE", arm.service_id("wsfirst", "dicom", "first"))
        assert deleted.status_code in (200, 202, 204), deleted.text
        assert server.http.get(f"{first_url}/studies").status_code == 404
        assert_served(server, second_url, second, second_sent)

        # A new service under the deleted one's names starts empty: nothing of the old data,
        # nothing of the other service's.
        arm.ok("PUT", arm.service_id("wsfirst", "dicom", "first"), {"location": "local"})
        assert retrieved_bytes(server, first_url, first)[0] == 404
        assert retrieved_bytes(server, first_url, second)[0] == 404
        assert_served(server, second_url, second, second_sent)
    finally:
        assert server.stop() == 0


def test_a_row_given_another_instances_blob_is_refused_not_served(hds):
    """Rule 8: a blob key is bound to its instance. Two instances of one series whose rows swap
    their blob references (name and wrapped key, as someone with write access to the index could)
    answer 500 DataIntegrityCheckFailed and never each other's bytes; the log names the check,
    not the instance."""
    first = fresh_instance()
    second = fresh_instance()
    second.StudyInstanceUID = first.StudyInstanceUID
    second.SeriesInstanceUID = first.SeriesInstanceUID
    second.PatientName = "Swapped^Second"
    store(hds, first)
    store(hds, second)
    assert_readable(hds, first)
    assert hds.stop() == 0
    database = sqlite3.connect(hds.data_dir / "index.db")
    try:
        rows = database.execute("SELECT id, blob_name, blob_key FROM dicom_instances ORDER BY id").fetchall()
        assert len(rows) == 2, rows
        (first_id, first_name, first_key), (second_id, second_name, second_key) = rows
        database.execute("UPDATE dicom_instances SET blob_name = ?, blob_key = ? WHERE id = ?",
                         (second_name, second_key, first_id))
        database.execute("UPDATE dicom_instances SET blob_name = ?, blob_key = ? WHERE id = ?",
                         (first_name, first_key, second_id))
        database.commit()
    finally:
        database.close()
    hds.start()
    for dataset in (first, second):
        response = retrieve(hds, dataset)
        assert response.status_code == 500, response.status_code
        assert response.json()["error"]["code"] == "DataIntegrityCheckFailed", response.text
        assert b"Swapped" not in response.content
    study = hds.http.get(f"{hds.url}/studies/{first.StudyInstanceUID}",
                         headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert study.status_code == 500, study.status_code
    assert b"Swapped" not in study.content
    log = hds.logs()
    assert "DataIntegrity" in log or "integrity" in log, log[-2000:]
    assert "Swapped" not in log and first.SOPInstanceUID not in log
