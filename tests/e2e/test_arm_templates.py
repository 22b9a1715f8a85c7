"""End to end: the seed's two ARM templates, unchanged, deployed with `hds deployment group create`
against a real `hds up`, and the DICOM services they configure serving data."""

import json
import pathlib
import subprocess

from conftest import (
    GUID,
    HDS_BIN,
    ArmClient,
    assert_readable,
    fresh_instance,
    key_url_of,
    retrieve,
    store,
    wait_for,
    wait_health,
)

TEMPLATES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "arm"
CRYPTO_OFFICER = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603"


def deploy(server, template, *parameters, name=None):
    """`hds deployment group create` into the default resource group, as the bootstrap admin."""
    command = [
        HDS_BIN, "deployment", "group", "create", "-g", "default",
        "-f", str(TEMPLATES / template), "--data-dir", str(server.data_dir), "--endpoint", server.base,
    ]
    if name:
        command += ["-n", name]
    if parameters:
        command += ["-p", *parameters]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_user_assigned_template_creates_everything_and_serves_data(cmk_hds):
    server = cmk_hds
    arm = ArmClient(server)
    result = deploy(
        server, "arm-template-user-assigned.json",
        "workspaceName=templatews", "dicomServiceName=templated", "keyVaultName=templatevault",
        "keyName=templatekey", "userAssignedIdentityName=templateidentity",
        "roleAssignmentName=templaterole", f"tenantId={arm.tenant_id}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    deployment = arm.get(f"{arm.group()}/providers/Microsoft.Resources/deployments/arm-template-user-assigned",
                         api_version="2022-09-01")
    assert deployment["properties"]["provisioningState"] == "Succeeded"

    # What the template made: a vault with soft delete and purge protection, an RSA 2048 key,
    # a user-assigned identity holding Key Vault Crypto Officer at the group's scope, and the
    # service with that identity and the key's versioned URL.
    vault = arm.get(arm.vault_id("templatevault"), api_version="2022-07-01")["properties"]
    assert vault["enableSoftDelete"] is True and vault["enablePurgeProtection"] is True
    key = arm.get(f"{arm.vault_id('templatevault')}/keys/templatekey", api_version="2022-07-01")["properties"]
    identity = arm.get(arm.identity_id("templateidentity"), api_version="2023-01-31")
    principal_id = identity["properties"]["principalId"]
    assert GUID.match(principal_id)
    granted = arm.assignments_of(principal_id, arm.group())
    assert [a["properties"]["roleDefinitionId"].rsplit("/", 1)[1] for a in granted] == [CRYPTO_OFFICER]
    assert granted[0]["properties"]["scope"].lower() == arm.group().lower()

    service_id = arm.service_id("templatews", "templated")
    service = arm.get(service_id)
    assert service["identity"]["type"].lower() == "userassigned"
    assert [k.lower() for k in service["identity"]["userAssignedIdentities"]] == [arm.identity_id("templateidentity").lower()]
    assert key_url_of(service) == key["keyUriWithVersion"]
    assert key["keyUriWithVersion"].startswith(vault["vaultUri"].rstrip("/") + "/keys/templatekey/")
    assert service["properties"]["provisioningState"] == "Succeeded"

    service_url = f"{server.base}/dicom/templatews/templated/v2"
    dataset = fresh_instance()
    store(server, dataset, service_url)
    assert_readable(server, dataset, service_url)
    wait_health(arm, service_id, "Available")

    # Deploying the same template again is the seed's "update": it succeeds and changes nothing
    # that matters (same key version, same identity).
    again = deploy(
        server, "arm-template-user-assigned.json",
        "workspaceName=templatews", "dicomServiceName=templated", "keyVaultName=templatevault",
        "keyName=templatekey", "userAssignedIdentityName=templateidentity",
        "roleAssignmentName=templaterole", f"tenantId={arm.tenant_id}",
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert key_url_of(arm.get(service_id)) == key["keyUriWithVersion"]
    assert arm.get(arm.identity_id("templateidentity"), api_version="2023-01-31")["properties"]["principalId"] == principal_id
    assert_readable(server, dataset, service_url)


def test_system_assigned_template_sets_the_key_on_an_existing_service(cmk_hds):
    server = cmk_hds
    arm = ArmClient(server)
    key_url = key_url_of(arm.get(arm.service_id()))

    # An existing service with its system-assigned identity on and no customer-managed key.
    service_id = arm.service_id(service="system")
    created = arm.ok("PUT", service_id, {"location": "local", "identity": {"type": "SystemAssigned"}, "properties": {}})
    principal_id = created["identity"]["principalId"]
    assert GUID.match(principal_id)
    assert "encryption" not in created["properties"] or not created["properties"]["encryption"].get("customerManagedKeyEncryption")
    service_url = f"{server.base}/dicom/default/system/v2"
    before_key = fresh_instance()
    store(server, before_key, service_url)

    parameters = ("workspaceName=default", "dicomServiceName=system", f"keyEncryptionKeyUrl={key_url}")
    # Before the identity has the role the deployment fails, naming the principal and the role.
    refused = deploy(server, "arm-template-system-assigned.json", *parameters, name="refused")
    assert refused.returncode != 0
    assert "KeyAccessDenied" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    assert principal_id in refused.stdout + refused.stderr
    assert arm.get(service_id)["identity"]["principalId"] == principal_id

    arm.grant(principal_id, arm.vault_id())
    result = deploy(server, "arm-template-system-assigned.json", *parameters)
    assert result.returncode == 0, result.stdout + result.stderr
    service = arm.get(service_id)
    assert key_url_of(service) == key_url
    assert service["identity"]["principalId"] == principal_id, "the update replaced the identity"
    assert service["properties"]["provisioningState"] == "Succeeded"
    assert service["location"].replace(" ", "").lower() == "westus3"

    wait_health(arm, service_id, "Available")
    after_key = fresh_instance("MR_small.dcm")
    store(server, after_key, service_url)
    assert_readable(server, after_key, service_url)
    # Data stored before the key was set stays readable.
    assert_readable(server, before_key, service_url)

    # The key now guards this service: removing the identity's role loses access.
    (assignment,) = arm.assignments_of(principal_id, arm.vault_id())
    arm.ok("DELETE", assignment["id"], api_version="2022-04-01")
    wait_for(lambda: retrieve(server, after_key, service_url).status_code == 500, timeout=20,
             what="the service to lose key access")
    assert retrieve(server, after_key, service_url).json()["error"]["code"] == "CustomerManagedKeyAccessLost"


def test_system_assigned_template_redeployed_on_the_seed_service(cmk_hds):
    """The recovery step the seed names: deploying the template again updates the service."""
    server = cmk_hds
    arm = ArmClient(server)
    service_id = arm.service_id()
    before = arm.get(service_id)
    result = deploy(server, "arm-template-system-assigned.json",
                    "workspaceName=default", "dicomServiceName=dicom", f"keyEncryptionKeyUrl={key_url_of(before)}")
    assert result.returncode == 0, result.stdout + result.stderr
    after = arm.get(service_id)
    assert after["identity"]["principalId"] == before["identity"]["principalId"]
    assert key_url_of(after) == key_url_of(before)
    assert after["systemData"]["lastModifiedAt"] != before["systemData"]["lastModifiedAt"]
    dataset = fresh_instance()
    store(server, dataset)
    assert_readable(server, dataset)
    output = result.stdout.strip()
    if output.startswith("{"):
        assert json.loads(output)["properties"]["provisioningState"] == "Succeeded"
