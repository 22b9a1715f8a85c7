"""Identity end to end: an external OpenID issuer trusted by configuration, and data-plane RBAC
(DICOM Data Reader may read, not write) granted through the control plane."""

import uuid

import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import ExternalIssuer, HdsServer
from test_dicomweb import stow, to_bytes, unique_copy

DICOM_DATA_READER = "e89c7a3c-2f64-4fa1-a847-3e4c9ba4283a"
ISSUER = "https://login.example.org/organisation/v2.0"


def test_external_issuer_and_reader_role(tmp_path):
    issuer = ExternalIssuer(tmp_path, ISSUER)
    server = HdsServer(tmp_path / "data", extra_args=issuer.flag()).start()
    try:
        stored = unique_copy("CT_small.dcm")
        assert stow(server, [to_bytes(stored)]).status_code == 200

        user = str(uuid.uuid4())
        claims = issuer.user_claims("https://dicom.healthcareapis.azure.com", user)
        now = claims["iat"]
        token = issuer.token(claims)
        headers = {"Authorization": f"Bearer {token}"}

        # Authenticated, but no role yet: 403 naming the missing permission.
        denied = requests.get(f"{server.url}/studies", headers=headers)
        assert denied.status_code == 403, denied.text
        assert "read" in denied.json()["error"]["message"]

        # DICOM Data Reader on the DICOM service, through the control plane.
        admin = server.admin()
        service_id = (f"/subscriptions/{admin['subscriptionId']}/resourceGroups/default/providers/"
                      "Microsoft.HealthcareApis/workspaces/default/dicomservices/dicom")
        assignment = requests.put(
            f"{server.base}{service_id}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}",
            params={"api-version": "2022-04-01"},
            headers={"Authorization": f"Bearer {server.token('https://management.azure.com')}"},
            json={"properties": {
                "roleDefinitionId": f"/subscriptions/{admin['subscriptionId']}/providers/Microsoft.Authorization/roleDefinitions/{DICOM_DATA_READER}",
                "principalId": issuer.principal_id(user), "principalType": "User"}},
        )
        assert assignment.status_code in (200, 201), assignment.text

        found = requests.get(f"{server.url}/studies", params={"StudyInstanceUID": stored.StudyInstanceUID}, headers=headers)
        assert found.status_code == 200 and len(found.json()) == 1
        # A reader may not write or delete.
        boundary = "b"
        body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + to_bytes(unique_copy("CT_small.dcm")) + f"\r\n--{boundary}--\r\n".encode()
        write = requests.post(f"{server.url}/studies", data=body, headers={
            **headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert write.status_code == 403
        assert requests.delete(f"{server.url}/studies/{stored.StudyInstanceUID}", headers=headers).status_code == 403

        # A token from the same issuer signed by another key, or for another audience, is refused.
        forged = issuer.token(claims, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        assert requests.get(f"{server.url}/studies", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
        other_audience = issuer.token({**claims, "aud": "https://management.azure.com"})
        assert requests.get(f"{server.url}/studies", headers={"Authorization": f"Bearer {other_audience}"}).status_code == 401
        expired = issuer.token({**claims, "exp": now - 3600, "nbf": now - 7200, "iat": now - 7200})  # beyond the clock-skew allowance
        assert requests.get(f"{server.url}/studies", headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    finally:
        assert server.stop() == 0
