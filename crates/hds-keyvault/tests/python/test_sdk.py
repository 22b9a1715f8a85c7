"""The official Azure Key Vault keys SDK against hds's vault, over real HTTPS.

Run from the workspace root:

    pip install azure-keyvault-keys azure-identity cryptography pytest requests
    python3 -m pytest crates/hds-keyvault/tests/python -q

The fixture builds and starts `cargo run -p hds-keyvault --example sdk_test_server` (or the
binary named by HDS_KEYVAULT_TEST_SERVER), which prints the vault URLs, CA path and tokens as
one JSON line, and stops it by closing its stdin.
"""

import base64
import hashlib
import json
import os
import pathlib
import subprocess
import time
import uuid

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys import (
    JsonWebKey,
    KeyClient,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
    KeyType,
)
from azure.keyvault.keys.crypto import (
    CryptographyClient,
    EncryptionAlgorithm,
    KeyWrapAlgorithm,
    SignatureAlgorithm,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

WORKSPACE = pathlib.Path(__file__).resolve().parents[4]
POLL = {"_polling_interval": 0.05}


class StaticTokenCredential:
    """A credential that always presents one bearer token (the server's test table knows it)."""

    def __init__(self, token):
        self._token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self._token, int(time.time()) + 3600)


def b64url_to_int(data: bytes) -> int:
    return int.from_bytes(data, "big")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("HDS_KEYVAULT_TEST_SERVER")
    if not binary:
        subprocess.run(
            ["cargo", "build", "-q", "-p", "hds-keyvault", "--example", "sdk_test_server"],
            cwd=WORKSPACE,
            check=True,
        )
        target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", WORKSPACE / "target"))
        binary = str(target / "debug" / "examples" / "sdk_test_server")
    process = subprocess.Popen(
        [binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        assert line, "the test server exited before describing itself"
        description = json.loads(line)
        yield description
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def key_client(server, vault="protected", token="officer"):
    return KeyClient(
        server["vaults"][vault],
        StaticTokenCredential(server["tokens"][token]),
        verify_challenge_resource=False,
        connection_verify=server["ca"],
    )


def crypto_client(server, key, token="officer"):
    return CryptographyClient(
        key,
        StaticTokenCredential(server["tokens"][token]),
        verify_challenge_resource=False,
        connection_verify=server["ca"],
    )


def local_public_key(key):
    numbers = rsa.RSAPublicNumbers(b64url_to_int(key.key.e), b64url_to_int(key.key.n))
    return numbers.public_key()


def test_create_rsa_keys_of_each_size_and_hsm(server):
    client = key_client(server)
    for size in (2048, 3072):
        name = unique(f"rsa{size}")
        key = client.create_rsa_key(name, size=size)
        assert key.key_type == KeyType.rsa
        assert len(key.key.n) == size // 8
        assert key.key.e == b"\x01\x00\x01"
        assert key.id.startswith(server["vaults"]["protected"] + "keys/" + name + "/")
        assert key.properties.recovery_level == "Recoverable"
        assert not hasattr(key.key, "d") or key.key.d is None
    hsm = client.create_rsa_key(unique("hsm"), size=2048, hardware_protected=True)
    assert hsm.key_type == KeyType.rsa_hsm


def test_get_versions_and_rotate(server):
    client = key_client(server)
    name = unique("rotated")
    first = client.create_rsa_key(name, size=2048, tags={"purpose": "kek"})
    assert client.get_key(name).id == first.id
    assert client.get_key(name, first.properties.version).key.n == first.key.n
    rotated = client.rotate_key(name)
    assert rotated.properties.version != first.properties.version
    assert rotated.key.n != first.key.n
    assert rotated.properties.tags == {"purpose": "kek"}
    assert client.get_key(name).id == rotated.id
    versions = {props.version for props in client.list_properties_of_key_versions(name)}
    assert versions == {first.properties.version, rotated.properties.version}


def test_list_keys_follows_next_links(server):
    client = key_client(server, "plain")
    names = {unique("listed") for _ in range(4)}
    for name in names:
        client.create_rsa_key(name, size=2048)
    listed = {props.name for props in client.list_properties_of_keys(max_page_size=2)}
    assert names <= listed


def test_wrap_unwrap_round_trip_cross_checked_with_local_rsa(server):
    client = key_client(server)
    key = client.create_rsa_key(unique("wrap"), size=2048)
    crypto = crypto_client(server, key)
    data_key = os.urandom(32)

    # Wrapped locally with the returned public JWK, unwrapped by the vault.
    wrapped_locally = local_public_key(key).encrypt(
        data_key,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    unwrapped = crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped_locally)
    assert unwrapped.key == data_key
    assert unwrapped.key_id == key.id

    # Wrapped by the vault (raw REST, so the SDK cannot do it locally), unwrapped by the SDK.
    token = server["tokens"]["officer"]
    response = requests.post(
        f"{key.id}/wrapkey?api-version=7.5",
        json={"alg": "RSA-OAEP", "value": base64.urlsafe_b64encode(data_key).decode().rstrip("=")},
        headers={"Authorization": f"Bearer {token}"},
        verify=server["ca"],
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kid"] == key.id
    wrapped_remotely = base64.urlsafe_b64decode(body["value"] + "=" * (-len(body["value"]) % 4))
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped_remotely).key == data_key

    # The wrong algorithm fails to unwrap.
    with pytest.raises(HttpResponseError) as failure:
        crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped_locally)
    assert failure.value.status_code == 400


def test_encrypt_decrypt_and_sign_verify(server):
    client = key_client(server)
    key = client.create_rsa_key(unique("crypt"), size=2048)
    crypto = crypto_client(server, key)
    encrypted = crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"attack at dawn")
    assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, encrypted.ciphertext).plaintext == b"attack at dawn"
    digest = hashlib.sha256(b"a study manifest").digest()
    signed = crypto.sign(SignatureAlgorithm.rs256, digest)
    local_public_key(key).verify(signed.signature, b"a study manifest", padding.PKCS1v15(), hashes.SHA256())
    assert crypto.verify(SignatureAlgorithm.rs256, digest, signed.signature).is_valid
    pss = crypto.sign(SignatureAlgorithm.ps256, digest)
    local_public_key(key).verify(
        pss.signature,
        b"a study manifest",
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )


def test_import_key_then_decrypt_what_local_code_encrypted(server):
    client = key_client(server)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private.private_numbers()

    def raw(value):
        return value.to_bytes((value.bit_length() + 7) // 8, "big")

    jwk = JsonWebKey(
        kty="RSA",
        n=raw(numbers.public_numbers.n),
        e=raw(numbers.public_numbers.e),
        d=raw(numbers.d),
        p=raw(numbers.p),
        q=raw(numbers.q),
        dp=raw(numbers.dmp1),
        dq=raw(numbers.dmq1),
        qi=raw(numbers.iqmp),
        key_ops=["unwrapKey", "wrapKey"],
    )
    imported = client.import_key(unique("imported"), jwk)
    assert b64url_to_int(imported.key.n) == numbers.public_numbers.n
    assert sorted(imported.key_operations) == ["unwrapKey", "wrapKey"]
    wrapped = private.public_key().encrypt(
        b"k" * 32, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    )
    assert crypto_client(server, imported).unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped).key == b"k" * 32
    # key_ops exclude decrypt: refused.
    with pytest.raises(HttpResponseError) as failure:
        crypto_client(server, imported).decrypt(EncryptionAlgorithm.rsa_oaep, wrapped)
    assert failure.value.status_code == 403


def test_disabled_key_refuses_operations(server):
    client = key_client(server)
    key = client.create_rsa_key(unique("disabled"), size=2048)
    crypto = crypto_client(server, key)
    wrapped = local_public_key(key).encrypt(
        b"x" * 32, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    )
    updated = client.update_key_properties(key.name, key.properties.version, enabled=False)
    assert updated.properties.enabled is False
    with pytest.raises(HttpResponseError) as failure:
        crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped)
    assert failure.value.status_code == 403
    assert "disabled" in failure.value.message
    client.update_key_properties(key.name, key.properties.version, enabled=True)
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key == b"x" * 32


def test_delete_recover_and_purge_protection(server):
    client = key_client(server)
    name = unique("deleted")
    key = client.create_rsa_key(name, size=2048)
    deleted = client.begin_delete_key(name, **POLL).result()
    assert deleted.recovery_id == server["vaults"]["protected"] + "deletedkeys/" + name
    assert deleted.scheduled_purge_date > deleted.deleted_date
    with pytest.raises(ResourceNotFoundError):
        client.get_key(name)
    assert client.get_deleted_key(name).id == key.id
    assert name in {item.name for item in client.list_deleted_keys()}
    with pytest.raises(HttpResponseError) as conflict:
        client.create_rsa_key(name, size=2048)
    assert conflict.value.status_code == 409

    with pytest.raises(HttpResponseError) as refused:
        client.purge_deleted_key(name)
    assert refused.value.status_code == 403
    assert "purge protection" in refused.value.message

    recovered = client.begin_recover_deleted_key(name, **POLL).result()
    assert recovered.id == key.id
    assert client.get_key(name).key.n == key.key.n


def test_purge_without_protection(server):
    client = key_client(server, "plain")
    name = unique("purged")
    client.create_rsa_key(name, size=2048)
    client.begin_delete_key(name, **POLL).result()
    client.purge_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_key(name)
    # The name is free again.
    assert client.create_rsa_key(name, size=2048).name == name


def test_backup_restore_and_hsm_refusal(server):
    client = key_client(server, "plain")
    name = unique("backed")
    key = client.create_rsa_key(name, size=2048)
    client.rotate_key(name)
    backup = client.backup_key(name)
    client.begin_delete_key(name, **POLL).result()
    client.purge_deleted_key(name)
    restored = client.restore_key_backup(backup)
    assert restored.name == name
    versions = {props.version for props in client.list_properties_of_key_versions(name)}
    assert key.properties.version in versions and len(versions) == 2

    hsm = client.create_rsa_key(unique("hsm"), size=2048, hardware_protected=True)
    with pytest.raises(HttpResponseError) as refused:
        client.backup_key(hsm.name)
    assert refused.value.status_code == 400
    assert "non-extractable" in refused.value.message


def test_rbac_denies_actions_not_granted(server):
    officer = key_client(server)
    name = unique("rbac")
    officer.create_rsa_key(name, size=2048)
    reader = key_client(server, token="reader")
    assert reader.get_key(name).name == name
    with pytest.raises(HttpResponseError) as denied:
        reader.create_rsa_key(unique("nope"), size=2048)
    assert denied.value.status_code == 403
    assert "Microsoft.KeyVault/vaults/keys/create/action" in denied.value.message


def test_unknown_token_is_challenged(server):
    client = key_client(server, token="unknown")
    with pytest.raises(HttpResponseError) as refused:
        client.get_key("anything")
    assert refused.value.status_code == 401


def test_firewall_refuses_loopback_client(server):
    client = key_client(server, "walled")
    with pytest.raises(HttpResponseError) as refused:
        client.create_rsa_key(unique("walled"), size=2048)
    assert refused.value.status_code == 403
    assert "Client address is not authorized" in refused.value.message


def test_rotation_policy_round_trip_and_expiry_of_rotated_versions(server):
    client = key_client(server)
    name = unique("policy")
    client.create_rsa_key(name, size=2048)
    default = client.get_key_rotation_policy(name)
    assert [(a.action, a.time_before_expiry) for a in default.lifetime_actions] == [
        (KeyRotationPolicyAction.notify, "P30D")
    ]
    assert default.created_on is None

    policy = KeyRotationPolicy()
    actions = [
        KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P30D"),
        KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P7D"),
    ]
    updated = client.update_key_rotation_policy(
        name, policy, lifetime_actions=actions, expires_in="P90D"
    )
    assert updated.id == server["vaults"]["protected"] + f"keys/{name}/rotationpolicy"
    assert updated.expires_in == "P90D"
    assert [(a.action, a.time_after_create, a.time_before_expiry) for a in updated.lifetime_actions] == [
        (KeyRotationPolicyAction.rotate, "P30D", None),
        (KeyRotationPolicyAction.notify, None, "P7D"),
    ]
    assert updated.created_on is not None
    assert client.get_key_rotation_policy(name).expires_in == "P90D"

    # A rotation takes the policy's expiry.
    rotated = client.rotate_key(name)
    lifetime = rotated.properties.expires_on - rotated.properties.created_on
    assert lifetime.days == 90

    with pytest.raises(HttpResponseError) as refused:
        client.update_key_rotation_policy(
            name,
            policy,
            lifetime_actions=[KeyRotationLifetimeAction("Rotate", time_after_create="P1D")],
        )
    assert refused.value.status_code == 400
    assert "at least 7 days" in refused.value.message

    # Reading a key is not reading its policy.
    with pytest.raises(HttpResponseError) as denied:
        key_client(server, token="reader").get_key_rotation_policy(name)
    assert denied.value.status_code == 403
    assert "keyrotationpolicies/read" in denied.value.message


def test_get_random_bytes(server):
    client = key_client(server)
    first = client.get_random_bytes(64)
    assert len(first) == 64 and first != client.get_random_bytes(64)
    with pytest.raises(HttpResponseError) as refused:
        client.get_random_bytes(129)
    assert refused.value.status_code == 400
