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
