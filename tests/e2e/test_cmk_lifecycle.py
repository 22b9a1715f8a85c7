"""End to end: the seed's customer-managed-key flow and what happens to a DICOM service when its
key access changes: a real `hds up` (with a fast key-access monitor), its control plane, its
vault's data plane and DICOMweb."""

import re

from conftest import (
    CRYPTO_SERVICE_ENCRYPTION_USER,
    GUID,
    ArmClient,
    assert_readable,
    blob_files,
    data_plane_status,
    fresh_instance,
    key_client,
    key_url_of,
    retrieve,
    store,
    wait_data_plane,
    wait_health,
    wait_probes,
    vault_of,
)

VERSIONED_KEY_URL = re.compile(r"^https://127\.0\.0\.1:\d+/keys/dicom-cmk/[0-9a-f]{32}$")


# ---- 1. the seed's flow -----------------------------------------------------------------------


def test_seed_flow_result_serves_data_and_survives_a_restart(cmk_hds):
    server = cmk_hds
    arm = ArmClient(server)
    service_id = arm.service_id()
    service = arm.get(service_id)

    # The service as the seed leaves it: system-assigned identity, versioned key URL, Succeeded.
    assert service["identity"]["type"] == "SystemAssigned"
    principal_id = service["identity"]["principalId"]
    assert GUID.match(principal_id), principal_id
    assert service["identity"]["tenantId"] == arm.tenant_id
    key_url = key_url_of(service)
    assert VERSIONED_KEY_URL.match(key_url), key_url
    assert service["properties"]["provisioningState"] == "Succeeded"

    # The URL names the vault's current version of an enabled RSA 3072 wrap/unwrap key.
    vault = vault_of(server, arm)
    key = vault.key("dicom-cmk")
    assert key["key"]["kid"] == key_url
    assert key["key"]["kty"] in ("RSA", "RSA-HSM")
    assert set(key["key"]["key_ops"]) >= {"wrapKey", "unwrapKey"}
    assert key["attributes"]["enabled"] is True
    # The vault has what the seed asks for.
    vault_resource = arm.get(arm.vault_id(), api_version="2022-07-01")["properties"]
    assert vault_resource["enableSoftDelete"] is True
    assert vault_resource["enablePurgeProtection"] is True
    assert vault_resource["enableRbacAuthorization"] is True
    # The service's principal holds Key Vault Crypto Service Encryption User on the vault.
    granted = arm.assignments_of(principal_id, arm.vault_id())
    assert [a["properties"]["roleDefinitionId"].rsplit("/", 1)[1] for a in granted] == [CRYPTO_SERVICE_ENCRYPTION_USER]
    assert granted[0]["properties"]["scope"].lower() == arm.vault_id().lower()

    health = wait_health(arm, service_id, "Available")
    assert key_url in health["detailedStatus"]

    dataset = fresh_instance()
    store(server, dataset)
    assert_readable(server, dataset)
    blobs = blob_files(server.data_dir)
    assert blobs, "the stored instance left no blob under the data dir"

    # A restart keeps everything and sets nothing up again.
    assert server.stop() == 0
    server.start()
    arm = ArmClient(server)
    again = arm.get(service_id)
    assert again["identity"]["principalId"] == principal_id
    assert key_url_of(again) == key_url
    assert again["systemData"]["lastModifiedAt"] == service["systemData"]["lastModifiedAt"], "the seed ran again"
    assert again["properties"]["provisioningState"] == "Succeeded"
    assert len(arm.assignments_of(principal_id, arm.vault_id())) == 1
    # The key URL still reaches the vault (its address is stable across restarts).
    assert vault_of(server, arm).key("dicom-cmk")["key"]["kid"] == key_url
    wait_health(arm, service_id, "Available")
    assert_readable(server, dataset)
    assert blob_files(server.data_dir) == blobs


# ---- 2. the key disabled, within and beyond the latch -------------------------------------------


def test_disabled_key_loses_access_and_recovers_within_the_latch(cmk_hds):
    server = cmk_hds
    arm = ArmClient(server)
    service_id = arm.service_id()
    key_url = key_url_of(arm.get(service_id))
    principal_id = arm.get(service_id)["identity"]["principalId"]
    vault = vault_of(server, arm)
    dataset = fresh_instance()
    wait_health(arm, service_id, "Available")
    store(server, dataset)

    # Disabled: data requests fail with the documented code, health says why.
    vault.set_enabled(key_url, False)
    wait_data_plane(server, (500, "CustomerManagedKeyAccessLost"))
    lost = retrieve(server, dataset)
    assert lost.status_code == 500
    assert lost.json()["error"]["code"] == "CustomerManagedKeyAccessLost"
    assert "KeyDisabled" in lost.json()["error"]["message"]
    assert "within 10 minutes" in lost.json()["error"]["message"], "the message names the configured latch"
    health = wait_health(arm, service_id, "Unavailable", reasonChronicity="Transient")
    assert "KeyDisabled" in health["detailedStatus"]
    assert "10 minutes after it was lost" in health["detailedStatus"]
    assert ".." not in health["detailedStatus"]
    assert key_url in health["summary"] and principal_id in health["summary"]
    assert any("enabled" in action["action"] for action in health["recommendedActions"])

    # Enabled again within the latch: back by itself, no update.
    vault.set_enabled(key_url, True)
    wait_data_plane(server, (200, None))
    wait_health(arm, service_id, "Available")
    assert_readable(server, dataset)


def test_disabled_key_beyond_the_latch_needs_an_update(latching_hds):
    server = latching_hds
    arm = ArmClient(server)
    service_id = arm.service_id()
    key_url = key_url_of(arm.get(service_id))
    vault = vault_of(server, arm)
    dataset = fresh_instance()
    wait_health(arm, service_id, "Available")
    store(server, dataset)

    # Disabled beyond the latch: latched; enabling alone does not bring it back.
    vault.set_enabled(key_url, False)
    wait_data_plane(server, (500, "CustomerManagedKeyAccessLost"))
    health = wait_health(arm, service_id, "Unavailable", reasonChronicity="Persistent")
    assert "update" in health["summary"].lower()
    assert "3 seconds" in health["summary"] + health["detailedStatus"], health
    assert any("PUT" in action["action"] for action in health["recommendedActions"])
    vault.set_enabled(key_url, True)
    wait_probes(arm, service_id, count=3)
    assert wait_health(arm, service_id, "Unavailable")["reasonChronicity"] == "Persistent"
    latched = retrieve(server, dataset)
    assert latched.status_code == 500
    assert latched.json()["error"]["code"] == "CustomerManagedKeyAccessLost"
    assert "update" in latched.json()["error"]["message"].lower()

    # The update (the same PUT again) re-validates the key and brings the service back.
    updated = arm.update_service(service_id)
    assert updated["properties"]["provisioningState"] == "Succeeded"
    assert data_plane_status(server) == (200, None)
    assert_readable(server, dataset)
    wait_health(arm, service_id, "Available")


def test_update_while_the_key_is_still_disabled_is_refused(latching_hds):
    server = latching_hds
    arm = ArmClient(server)
    service_id = arm.service_id()
    key_url = key_url_of(arm.get(service_id))
    vault = vault_of(server, arm)
    wait_health(arm, service_id, "Available")
    vault.set_enabled(key_url, False)
    wait_health(arm, service_id, "Unavailable", reasonChronicity="Persistent")

    refused = arm.put_service(service_id, key_url)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "KeyDisabled"
    assert "enable" in refused.json()["error"]["message"].lower()
    # A refused update leaves the stored resource as it was.
    assert arm.get(service_id)["properties"]["provisioningState"] == "Succeeded"
    assert data_plane_status(server) == (500, "CustomerManagedKeyAccessLost")

    # The latched state is kept across a restart, even with access back.
    vault.set_enabled(key_url, True)
    assert server.stop() == 0
    server.start()
    arm = ArmClient(server)
    wait_probes(arm, service_id, count=2)
    assert arm.health(service_id)["reasonChronicity"] == "Persistent"
    assert data_plane_status(server) == (500, "CustomerManagedKeyAccessLost")
    arm.update_service(service_id)
    assert data_plane_status(server) == (200, None)
    wait_health(arm, service_id, "Available")


# ---- 3. the role assignment removed and added back ----------------------------------------------


def test_removed_role_assignment_loses_access_and_regranting_restores_it(cmk_hds):
    server = cmk_hds
    arm = ArmClient(server)
    service_id = arm.service_id()
    principal_id = arm.get(service_id)["identity"]["principalId"]
    dataset = fresh_instance()
    wait_health(arm, service_id, "Available")
    store(server, dataset)

    (assignment,) = arm.assignments_of(principal_id, arm.vault_id())
    arm.ok("DELETE", assignment["id"], api_version="2022-04-01")
    assert arm.assignments_of(principal_id, arm.vault_id()) == []

    wait_data_plane(server, (500, "CustomerManagedKeyAccessLost"))
    health = wait_health(arm, service_id, "Unavailable")
    assert "KeyAccessDenied" in health["detailedStatus"], health
    assert principal_id in health["summary"]

    arm.grant(principal_id, arm.vault_id())
    wait_data_plane(server, (200, None))
    wait_health(arm, service_id, "Available")
    assert_readable(server, dataset)


# ---- 4. a new key version -----------------------------------------------------------------------


def test_new_key_version_update_keeps_data_without_reencrypting(cmk_hds):
    server = cmk_hds
    arm = ArmClient(server)
    service_id = arm.service_id()
    old_url = key_url_of(arm.get(service_id))
    vault = vault_of(server, arm)
    wait_health(arm, service_id, "Available")
    datasets = [fresh_instance("CT_small.dcm"), fresh_instance("MR_small.dcm")]
    for dataset in datasets:
        store(server, dataset)
    before = blob_files(server.data_dir)
    assert len(before) >= len(datasets)

    # The Azure SDK rotates and, later, disables the old version, as a user would.
    keys = key_client(server, vault.uri)
    new_url = keys.rotate_key("dicom-cmk").id
    assert new_url != old_url and new_url.rsplit("/", 1)[0] == old_url.rsplit("/", 1)[0]
    # A versioned URL pins the old version until the service is updated.
    assert key_url_of(arm.get(service_id)) == old_url

    response = arm.put_service(service_id, new_url)
    assert response.status_code == 200, response.text
    assert key_url_of(response.json()) == new_url
    assert response.json()["properties"]["provisioningState"] == "Succeeded"
    health = wait_health(arm, service_id, "Available")
    assert new_url in health["detailedStatus"]
    for dataset in datasets:
        assert_readable(server, dataset)
    # Nothing was re-encrypted: the same blob files, untouched.
    assert blob_files(server.data_dir) == before

    # The root key is now wrapped under the new version only: with the old version disabled,
    # a fresh start (nothing unwrapped in memory) still reads everything.
    disabled = keys.update_key_properties("dicom-cmk", old_url.rsplit("/", 1)[1], enabled=False)
    assert disabled.properties.enabled is False
    assert server.stop() == 0
    server.start()
    arm = ArmClient(server)
    wait_health(arm, service_id, "Available")
    for dataset in datasets:
        assert_readable(server, dataset)
    store(server, fresh_instance())


# ---- 5. a user-assigned identity and the key set at creation ------------------------------------


def test_second_service_with_user_assigned_identity_and_key_at_creation(cmk_hds):
    server = cmk_hds
    arm = ArmClient(server)
    key_url = key_url_of(arm.get(arm.service_id()))

    identity = arm.put_identity("second-identity")
    principal_id = identity["properties"]["principalId"]
    assert GUID.match(principal_id)
    identity_id = arm.identity_id("second-identity")

    second_id = arm.service_id(service="second")
    user_assigned = {"type": "UserAssigned", "userAssignedIdentities": {identity_id: {}}}

    # Without the role the creation is refused, and nothing is left behind.
    refused = arm.put_service(second_id, key_url, user_assigned)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "KeyAccessDenied"
    assert principal_id in refused.json()["error"]["message"]
    assert arm.request("GET", second_id).status_code == 404

    arm.grant(principal_id, arm.vault_id())
    created = arm.put_service(second_id, key_url, user_assigned)
    assert created.status_code in (200, 201), created.text
    body = created.json()
    assert body["identity"]["type"] == "UserAssigned"
    (attached,) = body["identity"]["userAssignedIdentities"].items()
    assert attached[0].lower() == identity_id.lower()
    assert attached[1]["principalId"] == principal_id
    assert key_url_of(body) == key_url
    assert body["properties"]["provisioningState"] == "Succeeded"
    assert "principalId" not in body["identity"]

    second_url = f"{server.base}/dicom/default/second/v2"
    dataset = fresh_instance()
    store(server, dataset, second_url)
    assert_readable(server, dataset, second_url)
    # The two services are separate: the instance is not in the seed's service.
    assert retrieve(server, dataset).status_code == 404
    wait_health(arm, second_id, "Available")

    # The user-assigned identity is what reaches the key: taking its role away loses access
    # for the second service only.
    (assignment,) = arm.assignments_of(principal_id, arm.vault_id())
    arm.ok("DELETE", assignment["id"], api_version="2022-04-01")
    wait_data_plane(server, (500, "CustomerManagedKeyAccessLost"), second_url)
    assert data_plane_status(server) == (200, None)
    arm.grant(principal_id, arm.vault_id())
    wait_data_plane(server, (200, None), second_url)
    assert_readable(server, dataset, second_url)
