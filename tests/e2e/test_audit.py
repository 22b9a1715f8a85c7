"""End to end: the audit log. Key operations on a vault and role assignment changes are
recorded with who, what, which resource, when and the decision, with no key material;
`hds audit verify` finds the chain intact, and broken once a stored record is edited."""

import base64
import json
import os
import sqlite3
import subprocess

from conftest import HDS_BIN, ArmClient, HdsServer, vault_of

WRAP = "Microsoft.KeyVault/vaults/keys/wrap/action"
ROTATE = "Microsoft.KeyVault/vaults/keys/rotate/action"
ASSIGN = "Microsoft.Authorization/roleAssignments/write"


def hds_audit(data_dir, *args) -> subprocess.CompletedProcess:
    return subprocess.run([HDS_BIN, "audit", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60,
                          env={key: value for key, value in os.environ.items() if not key.startswith("HDS_")})


def listed(data_dir, *filters) -> list:
    result = hds_audit(data_dir, "list", *filters)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_key_operations_and_role_changes_are_chained_and_an_edit_is_detected(tmp_path):
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir).start()
    try:
        arm = ArmClient(server)
        vault = vault_of(server, arm)
        kid = vault.key("dicom-cmk")["key"]["kid"]
        secret = os.urandom(32)
        wrapped = vault.request("POST", kid[len(vault.uri):] + "/wrapkey",
                                {"alg": "RSA-OAEP-256", "value": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()})
        assert wrapped.status_code == 200, wrapped.text
        vault.rotate("dicom-cmk")
        identity = arm.put_identity("audited")
        arm.grant(identity["properties"]["principalId"], arm.vault_id())
    finally:
        assert server.stop() == 0

    wraps = listed(data_dir, "--operation", WRAP)
    assert wraps, "the wrap is recorded"
    assert all(record["outcome"] == "allowed" and "/keys/" in record["resourceId"].lower() for record in wraps), wraps
    assert {record["principalId"] for record in wraps}
    assert listed(data_dir, "--operation", ROTATE)
    assignments = listed(data_dir, "--operation", ASSIGN)
    # The seed's grant to the DICOM service's identity, and this test's grant.
    assert len(assignments) >= 2
    every = listed(data_dir)
    assert [record["sequence"] for record in every] == list(range(1, len(every) + 1))
    assert listed(data_dir, "--limit", "1") == every[:1]
    text = json.dumps(every)
    for material in (base64.urlsafe_b64encode(secret).rstrip(b"=").decode(), wrapped.json()["value"]):
        assert material not in text

    verified = hds_audit(data_dir, "verify")
    assert verified.returncode == 0, verified.stderr
    assert f"{len(every)} records" in verified.stdout

    # Someone with write access to the database rewrites who did one of the operations.
    database = sqlite3.connect(data_dir / "index.db")
    edited = assignments[-1]["sequence"]
    database.execute("UPDATE audit_log SET principal_id = ? WHERE sequence = ?",
                     ("00000000-0000-0000-0000-000000000000", edited))
    database.commit()
    database.close()
    broken = hds_audit(data_dir, "verify")
    assert broken.returncode != 0
    assert f"broken at record {edited}" in broken.stderr, broken.stderr


DICOM_READ = "Microsoft.HealthcareApis/workspaces/dicomservices/resources/read"
DICOM_WRITE = "Microsoft.HealthcareApis/workspaces/dicomservices/resources/write"
ACTIVITY_LOG = "/providers/Microsoft.Insights/eventtypes/management/values"


def test_dicom_requests_are_audited_and_the_activity_log_serves_the_records(tmp_path):
    import datetime

    import requests
    from conftest import dicom_file, fresh_instance
    from test_az_cli import Az

    from conftest import ExternalIssuer

    data_dir = tmp_path / "data"
    issuer = ExternalIssuer(tmp_path, "https://login.audit.example/org")
    server = HdsServer(data_dir, http=False, extra_args=issuer.flag()).start()
    try:
        arm = ArmClient(server)
        service_id = arm.service_id()
        start = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        # An allowed store and search by the admin; a search by a principal without a DICOM
        # role (a managed identity's token), which is denied.
        dataset = fresh_instance()
        import io
        buffer = io.BytesIO()
        dataset.save_as(buffer)
        boundary = "audit-boundary"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue()
                + f"\r\n--{boundary}--\r\n".encode())
        stored = server.http.post(f"{server.url}/studies", data=body, verify=server.ca_path,
                                  headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert stored.status_code == 200, stored.text
        assert server.http.get(f"{server.url}/studies", verify=server.ca_path).status_code == 200
        # A user of the tenant without any role.
        claims = {**issuer.user_claims("https://dicom.healthcareapis.azure.com", "no-role"), "tid": arm.tenant_id}
        denied_principal = issuer.principal_id("no-role", arm.tenant_id)
        outsider = requests.Session()
        outsider.headers["Authorization"] = "Bearer " + issuer.token(claims)
        refused = outsider.get(f"{server.url}/studies", verify=server.ca_path)
        assert refused.status_code == 403, refused.text
        outsider_arm = requests.Session()
        outsider_arm.headers["Authorization"] = "Bearer " + issuer.token({**claims, "aud": "https://management.azure.com"})

        # The activity log: the subscription's events in Azure Monitor's shape.
        def events(filter_text, session=arm.session, **extra):
            response = session.get(f"{server.base}{arm.subscription}{ACTIVITY_LOG}",
                                   params={"api-version": "2015-04-01", "$filter": filter_text, **extra},
                                   verify=server.ca_path)
            return response

        def wait_for_dicom_records():
            import time
            deadline = time.time() + 30
            while time.time() < deadline:
                page = events(f"eventTimestamp ge '{start}' and resourceUri eq '{service_id}'").json()["value"]
                if any(event["caller"] == denied_principal for event in page):
                    return page
                time.sleep(0.2)
            raise AssertionError("the DICOM requests' records did not appear")

        page = wait_for_dicom_records()
        operations = {(event["operationName"]["value"], event["status"]["value"], event["caller"]) for event in page}
        admin_principal = next(event["caller"] for event in page if event["operationName"]["value"] == DICOM_WRITE)
        assert (DICOM_WRITE, "Succeeded", admin_principal) in operations
        assert (DICOM_READ, "Succeeded", admin_principal) in operations
        assert (DICOM_READ, "Failed", denied_principal) in operations
        assert all(event["resourceId"].lower() == service_id.lower() for event in page)
        # No DICOM value, UID or name in any record.
        text = json.dumps(page)
        assert str(dataset.StudyInstanceUID) not in text and str(dataset.SOPInstanceUID) not in text
        assert str(dataset.PatientName) not in text

        # The whole subscription, paged; a resource group; the caller filter.
        everything = events(f"eventTimestamp ge '{start}'").json()
        assert {event["eventDataId"] for event in page} <= {event["eventDataId"] for event in everything["value"]}
        group = events(f"eventTimestamp ge '{start}' and resourceGroupName eq 'default'").json()["value"]
        assert {event["eventDataId"] for event in page} <= {event["eventDataId"] for event in group}
        mine = events(f"eventTimestamp ge '{start}' and caller eq '{denied_principal}'").json()["value"]
        assert mine and all(event["caller"] == denied_principal for event in mine)
        future = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert events(f"eventTimestamp ge '{future}'").json()["value"] == []

        # Hostile or unsupported filters: clear 400s.
        for hostile in ("", "resourceGroupName eq 'default'", "eventTimestamp ge 'yesterday'", "eventTimestamp ge",
                        f"eventTimestamp ge '{start}' or 1 eq 1", f"eventTimestamp ge '{start}' and level eq 'x'",
                        f"eventTimestamp ge '{start}' and resourceUri eq 'not-an-id'",
                        f"eventTimestamp ge '{start} and caller eq 'x'", "eventTimestamp ge '" + "9" * 3000 + "'"):
            response = events(hostile)
            assert response.status_code == 400, (hostile, response.status_code, response.text)
            assert response.json()["error"]["message"]
        assert events(f"eventTimestamp ge '{start}'", **{"$skipToken": "-1"}).status_code == 400
        # Without read access at the scope: 403; without a token: 401.
        assert events(f"eventTimestamp ge '{start}'", session=outsider_arm).status_code == 403
        assert events(f"eventTimestamp ge '{start}'", session=requests.Session()).status_code == 401

        # The real az reads it.
        az = Az(server, tmp_path / "az")
        az.sign_in(server)
        listed_by_az = az.json("monitor", "activity-log", "list", "--resource-id", service_id, "--offset", "1h")
        assert {(event["operationName"]["value"], event["caller"]) for event in listed_by_az} >= {(DICOM_READ, denied_principal)}
    finally:
        assert server.stop() == 0
    result = hds_audit(data_dir, "verify")
    assert result.returncode == 0, result.stderr

