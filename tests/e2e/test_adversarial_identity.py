"""Where tokens go and who principals are, attacked against a real `hds up`:

- a key URL naming a host that is not a vault of this hds is refused with 400 before any
  connection (a plain TCP listener sees none), and the service keeps serving;
- a token of a trusted external issuer whose `oid`/`sub` is the bootstrap admin's principal id
  is another principal, with none of the admin's rights; external tokens without `exp`, valid
  for too long, not yet valid, or a megabyte long are refused; a plain-HTTP JWKS URL stops
  `hds up` from starting;
- a Contributor may write a vault but not switch it to access policies and grant itself
  unwrapKey (403 with an ARM error body); an Owner may."""

import socket
import time

import pytest
import requests
from conftest import ArmClient, ExternalIssuer, HdsServer, assert_readable, external_principal_id, fresh_instance, store

ISSUER = "https://login.example.org/organisation/v2.0"
MANAGEMENT = "https://management.azure.com"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
def list_groups(server, token):
    return requests.get(f"{server.base}/subscriptions/{server.admin()['subscriptionId']}/resourcegroups",
                        params={"api-version": "2022-09-01"}, headers={"Authorization": f"Bearer {token}"})


def admin_principal_id(arm) -> str:
    """The bootstrap admin's principal id, as any role-assignment listing shows it."""
    listed = arm.get(f"{arm.subscription}/providers/Microsoft.Authorization/roleAssignments", api_version="2022-04-01")
    owners = [a["properties"]["principalId"] for a in listed["value"]
              if a["properties"]["roleDefinitionId"].lower().endswith(OWNER)]
    assert owners, listed
    return owners[0]


def test_key_url_on_a_foreign_host_is_refused_before_any_connection(hds):
    arm = ArmClient(hds)
    dataset = fresh_instance()
    store(hds, dataset)
    service_id = arm.service_id()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        for key_url in (f"https://127.0.0.1:{port}/keys/cmk",
                        f"https://127.0.0.1:{port}/keys/cmk/{'0' * 32}",
                        # Azure's hosts only when an Azure tenant is configured (it is not).
                        "https://attacker.vault.azure.net/keys/cmk"):
            refused = arm.put_service(service_id, key_url)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["code"] == "KeyVaultHostNotAllowed", error
            assert "a key vault this hds serves" in error["message"], error
        # The request returned after it was refused: any connection it made would be queued.
        with pytest.raises(BlockingIOError):
            listener.accept()

    # The service keeps its key and its data; the control: its own vault's key is accepted.
    assert arm.update_service(service_id)["properties"]["provisioningState"] == "Succeeded"
    assert_readable(hds, dataset)


def test_external_tokens_are_namespaced_and_bounded(tmp_path):
    issuer = ExternalIssuer(tmp_path, ISSUER)
    server = HdsServer(tmp_path / "data", extra_args=issuer.flag()).start()
    try:
        arm = ArmClient(server)
        admin = admin_principal_id(arm)
        now = int(time.time())
        base = {"iss": ISSUER, "aud": MANAGEMENT, "iat": now, "nbf": now - 5, "exp": now + 600}

        # The control: the admin lists the subscription's resource groups.
        assert list_groups(server, server.token(MANAGEMENT)).status_code == 200
        # An external token claiming the admin's principal id is authenticated as another
        # principal, which holds no role: 403 naming that principal, not the admin.
        impostor = issuer.token({**base, "oid": admin, "sub": admin, "tid": arm.tenant_id})
        denied = list_groups(server, impostor)
        assert denied.status_code == 403, denied.text
        message = denied.json()["error"]["message"]
        assert external_principal_id(ISSUER, arm.tenant_id, admin) in message, message
        assert admin not in message, message

        # Refused with 401: no exp, valid for more than 24 h, not yet valid.
        for claims in ({key: value for key, value in {**base, "oid": admin}.items() if key != "exp"},
                       {**base, "oid": admin, "exp": now + 48 * 3600},
                       {**base, "oid": admin, "nbf": now + 3600, "exp": now + 7200}):
            refused = list_groups(server, issuer.token(claims))
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["message"], refused.text
        # A megabyte of bearer token: refused (401, or 431 by the HTTP layer), and no work.
        huge = requests.get(f"{server.base}/subscriptions/{arm.subscription_id}/resourcegroups",
                            params={"api-version": "2022-09-01"},
                            headers={"Authorization": "Bearer " + "A" * (1024 * 1024)})
        assert huge.status_code in (401, 431), huge.status_code
        assert list_groups(server, server.token(MANAGEMENT)).status_code == 200
    finally:
        assert server.stop() == 0


def test_jwks_over_plain_http_stops_startup(tmp_path):
    server = HdsServer(tmp_path / "data",
                       extra_args=["--trust-issuer", f"{ISSUER}=http://127.0.0.1:9/keys"])
    with pytest.raises(RuntimeError):
        server.start()
    assert server.process.wait(timeout=30) != 0
    server.log.close()
    assert "https://" in server.logs()


def test_contributor_cannot_switch_a_vault_to_access_policies(tmp_path):
    issuer = ExternalIssuer(tmp_path, ISSUER)
    server = HdsServer(tmp_path / "data", extra_args=issuer.flag()).start()
    try:
        arm = ArmClient(server)
        arm.put_group("team")
        now = int(time.time())

        def principal(oid, role):
            principal_id = external_principal_id(ISSUER, "", oid)
            arm.grant(principal_id, arm.group("team"), role)
            token = issuer.token({"iss": ISSUER, "aud": MANAGEMENT, "oid": oid, "nbf": now - 5, "exp": now + 600})
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
            return principal_id, session

        contributor, as_contributor = principal("contributor-1", CONTRIBUTOR)
        vault_id = arm.vault_id("teamvault", "team")
        arm.put_vault("teamvault", "team")

        def put_vault(session, rbac, policies):
            body = {"location": "local", "properties": {
                "tenantId": arm.tenant_id, "sku": {"family": "A", "name": "standard"},
                "enableSoftDelete": True, "enablePurgeProtection": True,
                "enableRbacAuthorization": rbac, "accessPolicies": policies}}
            return session.put(f"{server.base}{vault_id}", params={"api-version": "2022-07-01"}, json=body)

        grant_self = [{"tenantId": arm.tenant_id, "objectId": contributor,
                       "permissions": {"keys": ["get", "wrapKey", "unwrapKey"]}}]
        for rbac, policies in ((False, grant_self), (False, []), (True, grant_self)):
            refused = put_vault(as_contributor, rbac, policies)
            assert refused.status_code == 403, refused.text
            error = refused.json()["error"]
            assert error["code"] == "AuthorizationFailed", error
            assert "Microsoft.Authorization/roleAssignments/write" in error["message"], error
        current = arm.get(vault_id, api_version="2022-07-01")["properties"]
        assert current["enableRbacAuthorization"] is True and current["accessPolicies"] == []

        # The control: the Contributor may write the vault when who may use it stays the same,
        # and an Owner of the group may change it.
        assert put_vault(as_contributor, True, []).status_code == 200
        _, as_owner = principal("owner-1", OWNER)
        changed = put_vault(as_owner, False, grant_self)
        assert changed.status_code == 200, changed.text
        assert changed.json()["properties"]["enableRbacAuthorization"] is False
    finally:
        assert server.stop() == 0
