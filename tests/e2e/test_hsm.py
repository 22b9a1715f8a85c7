"""RSA-HSM keys in a PKCS#11 token (SoftHSM 2) as a DICOM service's customer-managed key:
generated and used inside the token; SoftHSM's RSA-OAEP (SHA-1) limit is followed."""

import os
import shutil
import subprocess

import requests

from conftest import HdsServer
from test_dicomweb import stow, to_bytes, unique_copy

MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def test_dicom_service_on_an_hsm_key(tmp_path, monkeypatch):
    assert shutil.which("softhsm2-util") and os.path.exists(MODULE), \
        "SoftHSM 2 is not installed: apt-get install -y softhsm2 (.ci/run installs it)"
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    config = tmp_path / "softhsm2.conf"
    config.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(config))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "hds", "--so-pin", "1234", "--pin", "5678"],
                   check=True, capture_output=True)
    pin = tmp_path / "pin"
    pin.write_text("5678")
    pin.chmod(0o600)
    args = ["--pkcs11-module", MODULE, "--pkcs11-token-label", "hds", "--pkcs11-pin-file", str(pin)]
    server = HdsServer(tmp_path / "data", extra_args=args).start()
    try:
        admin = server.admin()
        management = {"Authorization": f"Bearer {server.token('https://management.azure.com')}"}
        group = f"{server.base}/subscriptions/{admin['subscriptionId']}/resourceGroups/default"
        key = requests.put(f"{group}/providers/Microsoft.KeyVault/vaults/default/keys/hsm-key",
                           params={"api-version": "2022-07-01"}, headers=management,
                           json={"properties": {"kty": "RSA-HSM", "keySize": 2048, "keyOps": ["wrapKey", "unwrapKey"]}})
        assert key.status_code in (200, 201), key.text
        key_url = key.json()["properties"]["keyUriWithVersion"]

        before = unique_copy("CT_small.dcm")
        assert stow(server, [to_bytes(before)]).status_code == 200
        service = f"{group}/providers/Microsoft.HealthcareApis/workspaces/default/dicomservices/dicom"
        updated = requests.put(service, params={"api-version": "2023-06-01-preview"}, headers=management, json={
            "location": "local", "identity": {"type": "SystemAssigned"},
            "properties": {"encryption": {"customerManagedKeyEncryption": {"keyEncryptionKeyUrl": key_url}}}})
        assert updated.status_code in (200, 201), updated.text
        after = unique_copy("MR_small.dcm")
        assert stow(server, [to_bytes(after)]).status_code == 200
        for dataset in (before, after):
            got = server.http.get(f"{server.url}/studies/{dataset.StudyInstanceUID}",
                                  headers={"Accept": 'multipart/related; type="application/dicom"'})
            assert got.status_code == 200 and to_bytes(dataset) in got.content
    finally:
        assert server.stop() == 0
    # After a restart the root key is unwrapped inside the token again.
    restarted = HdsServer(tmp_path / "data", extra_args=args).start()
    try:
        got = restarted.http.get(f"{restarted.url}/studies/{before.StudyInstanceUID}/metadata")
        assert got.status_code == 200, got.text
    finally:
        assert restarted.stop() == 0
