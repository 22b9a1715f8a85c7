"""Vaults by host name on the main listener (`hds up --vault-domain DOMAIN`): every vault is
`https://{vault}.vault.DOMAIN:PORT/`, as Azure names them, so `az keyvault ... --vault-name`
works. The tests use the domain `localhost`: libnss-myhostname (scripts/test-setup installs it)
resolves every `*.localhost` name to the loopback addresses, as systemd-resolved does."""

import socket

import pytest
import requests
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from conftest import HdsServer, StaticTokenCredential, key_client
from test_az_cli import Az

DOMAIN = "localhost"


def require_localhost_names():
    try:
        socket.getaddrinfo(f"probe.vault.{DOMAIN}", 443)
    except socket.gaierror:
        pytest.fail(f"*.{DOMAIN} names do not resolve here: install libnss-myhostname (scripts/test-setup does)")


@pytest.fixture
def domain_hds(tmp_path):
    require_localhost_names()
    server = HdsServer(tmp_path / "data", http=False, extra_args=["--vault-domain", DOMAIN]).start()
    yield server
    assert server.stop() == 0, "hds did not stop cleanly on SIGTERM"


def test_vaults_are_served_by_host_name_on_the_main_listener(domain_hds, tmp_path):
    server = domain_hds
    vault_uri = f"https://default.vault.{DOMAIN}:{server.port}/"
    # The seed's flow at start put the default DICOM service on a key in the default vault,
    # reached by host name: its data plane works only if hds reaches that vault.
    listed = server.http.get(f"{server.url}/studies", verify=server.ca_path)
    assert listed.status_code in (200, 204), listed.text

    # The official SDK against the vault's host name: create a key, wrap and unwrap with it.
    client = key_client(server, vault_uri)
    key = client.create_rsa_key("by-host", size=2048)
    assert key.id.startswith(f"{vault_uri}keys/by-host/")
    crypto = CryptographyClient(
        key, StaticTokenCredential(server.token("https://vault.azure.net")),
        verify_challenge_resource=False, connection_verify=server.ca_path,
    )
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32)
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == b"k" * 32

    # A name under the domain that is no vault: the vault plane's 404, not one of hds's pages.
    vault_token = server.token("https://vault.azure.net")
    unknown = requests.get(f"https://nosuch.vault.{DOMAIN}:{server.port}/keys?api-version=7.4",
                           headers={"Authorization": f"Bearer {vault_token}"}, verify=server.ca_path)
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["code"]
    # Hostile Host headers go to hds's own routes, never to a vault.
    for host in (f"vault.{DOMAIN}", f".vault.{DOMAIN}", f"default.vault.{DOMAIN}.evil", "x" * 300):
        response = requests.get(f"{server.base}/keys?api-version=7.4", headers={"Host": host}, verify=server.ca_path)
        assert response.status_code in (400, 404), (host, response.status_code)
        assert "keys" not in response.text.lower() or "error" in response.text.lower()

    # az builds https://{name}{keyVaultDns}: the suffix carries the domain and the port.
    metadata = requests.get(f"{server.base}/metadata/endpoints?api-version=2022-09-01", verify=server.ca_path).json()
    assert metadata["suffixes"]["keyVaultDns"] == f".vault.{DOMAIN}:{server.port}"

    az = Az(server, tmp_path / "az")
    az.sign_in(server)
    names = {item["kid"].rsplit("/", 1)[-1] for item in az.json("keyvault", "key", "list", "--vault-name", "default")}
    assert "by-host" in names
    shown = az.json("keyvault", "key", "show", "--vault-name", "default", "--name", "by-host")
    assert shown["key"]["kid"] == key.id


def test_addressing_cannot_change_under_a_data_dir(tmp_path):
    require_localhost_names()
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir, http=False, extra_args=["--vault-domain", DOMAIN]).start()
    assert server.stop() == 0
    # Its vaults were created without ports: a start without the domain is refused, saying so.
    again = HdsServer(data_dir, http=False)
    with pytest.raises(RuntimeError) as refused:
        again.start()
    assert "--vault-domain" in str(refused.value)
    again.process.wait(timeout=30)
    # And a hostile domain is refused before anything starts.
    hostile = HdsServer(tmp_path / "other", http=False, extra_args=["--vault-domain", "evil.org/keys"])
    with pytest.raises(RuntimeError) as refused:
        hostile.start()
    assert "not a DNS domain" in str(refused.value)
    hostile.process.wait(timeout=30)
