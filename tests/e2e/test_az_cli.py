"""End to end: the real Azure CLI (the pip package `azure-cli`, pinned) against a live `hds up`
over HTTPS, doing the seed's flow with az only — cloud registration by endpoint discovery,
service-principal login, a resource group, a key vault and a key, a user-assigned identity, a
role assignment by role NAME, both seed templates through `az deployment group create`, `az
rest` on the DICOM service and its data plane, and the role assignment list (which looks the
principals up in Microsoft Graph).

az lives in its own virtual environment, cached between runs (`HDS_AZ_VENV`, by default
~/.cache/hds-ci/az-venv) and created here when missing: installing it takes minutes, running
it seconds."""

import fcntl
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import requests

from conftest import GUID, HdsServer, assert_readable, fresh_instance, store

AZ_CLI_VERSION = "2.91.0"
AZ_VENV = pathlib.Path(os.environ.get("HDS_AZ_VENV", pathlib.Path.home() / ".cache" / "hds-ci" / "az-venv"))
TEMPLATES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "arm"
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"


def az_binary() -> pathlib.Path:
    """The pinned az, installed into the cached virtual environment first if needed (under a
    lock, so parallel runs install once)."""
    az = AZ_VENV / "bin" / "az"
    marker = AZ_VENV / f".azure-cli-{AZ_CLI_VERSION}"
    AZ_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(AZ_VENV.parent / "az-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run([sys.executable, "-m", "venv", str(AZ_VENV)], check=True)
            # A few hundred packages from PyPI: one dropped connection must not fail the suite,
            # so a failed install is tried again (pip resumes with what it has installed).
            for _ in range(3):
                installed = subprocess.run(
                    [str(AZ_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--retries", "10",
                     "--disable-pip-version-check", f"azure-cli=={AZ_CLI_VERSION}"],
                    timeout=1800,
                )
                if installed.returncode == 0:
                    break
                time.sleep(10)
            else:
                raise AssertionError(f"installing azure-cli {AZ_CLI_VERSION} failed three times")
            marker.touch()
    return az


class Az:
    """az with a configuration directory of its own, trusting hds's CA."""

    def __init__(self, server: HdsServer, config_dir: pathlib.Path):
        self.binary = str(az_binary())
        self.env = dict(
            os.environ,
            AZURE_CONFIG_DIR=str(config_dir),
            AZURE_CORE_INSTANCE_DISCOVERY="false",
            AZURE_CORE_COLLECT_TELEMETRY="false",
            AZURE_CORE_ONLY_SHOW_ERRORS="true",
            AZURE_CORE_NO_COLOR="true",
            REQUESTS_CA_BUNDLE=server.ca_path,
        )

    def run(self, *args, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run([self.binary, *args], capture_output=True, text=True, env=self.env, timeout=300)
        if check:
            assert result.returncode == 0, f"az {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def json(self, *args):
        return json.loads(self.run(*args, "--output", "json").stdout or "null")

    def sign_in(self, server: HdsServer, client_id=None, secret=None, *extra):
        """The cloud from hds's /metadata/endpoints, then a service-principal login: the bootstrap
        admin's unless another client id and secret are given."""
        admin = server.admin()
        self.run("cloud", "register", "--name", "hds", "--endpoint-resource-manager", server.base + "/")
        self.run("cloud", "set", "--name", "hds")
        self.run("login", "--service-principal", "--username", client_id or admin["clientId"],
                 f"--password={secret or admin['clientSecret']}", "--tenant", admin["tenantId"], *extra)


@pytest.fixture
def https_hds(tmp_path):
    server = HdsServer(tmp_path / "data", http=False).start()
    yield server
    assert server.stop() == 0, "hds did not stop cleanly on SIGTERM"


def test_the_seed_flow_with_az_only(https_hds, tmp_path):
    server = https_hds
    admin = server.admin()
    az = Az(server, tmp_path / "az")

    # The cloud from hds's /metadata/endpoints (the URL as people write it, trailing slash
    # and all), then the bootstrap admin's service-principal login.
    az.run("cloud", "register", "--name", "hds", "--endpoint-resource-manager", server.base + "/")
    az.run("cloud", "set", "--name", "hds")
    cloud = az.json("cloud", "show", "--name", "hds")
    assert cloud["endpoints"]["activeDirectory"].rstrip("/") == server.base
    assert cloud["endpoints"]["microsoftGraphResourceId"].rstrip("/") == server.base
    az.run("login", "--service-principal", "--username", admin["clientId"],
           f"--password={admin['clientSecret']}", "--tenant", admin["tenantId"])
    assert az.json("account", "show")["id"] == admin["subscriptionId"]

    # Group, vault (listed and shown without its group: the subscription's resource list with
    # $filter), key, identity.
    az.run("group", "create", "--name", "azg", "--location", "westus3")
    vault = az.json("keyvault", "create", "--resource-group", "azg", "--name", "azvault",
                    "--enable-purge-protection", "true", "--enable-rbac-authorization", "true")
    vault_uri = vault["properties"]["vaultUri"]
    assert {"azvault", "default"} <= {item["name"] for item in az.json("keyvault", "list")}
    assert az.json("keyvault", "show", "--name", "azvault")["id"] == vault["id"]
    assert [item["id"] for item in az.json("resource", "list", "--resource-group", "azg")] == [vault["id"]]
    key = az.json("keyvault", "key", "create", "--id", f"{vault_uri}keys/azkey", "--kty", "RSA", "--size", "2048")
    assert key["key"]["kid"].startswith(f"{vault_uri}keys/azkey/")
    assert [item["kid"] for item in az.json("keyvault", "key", "list", "--id", vault_uri)] == [f"{vault_uri}keys/azkey"]
    identity = az.json("identity", "create", "--resource-group", "azg", "--name", "azid")
    assert GUID.match(identity["principalId"])

    # A role by its NAME (roleDefinitions with $filter=roleName eq ...), then the list, which
    # filters with atScope() and names the principal through Graph's getByIds.
    assignment = az.json("role", "assignment", "create", "--role", "Key Vault Crypto Service Encryption User",
                         "--assignee-object-id", identity["principalId"],
                         "--assignee-principal-type", "ServicePrincipal", "--scope", vault["id"])
    assert assignment["roleDefinitionId"].endswith(CRYPTO_SERVICE_ENCRYPTION_USER)
    listed = az.json("role", "assignment", "list", "--scope", vault["id"])
    assert [(item["principalId"], item["roleDefinitionName"]) for item in listed] == [
        (identity["principalId"], "Key Vault Crypto Service Encryption User")]
    assert listed[0]["principalName"] == identity["clientId"], listed
    everything = az.json("role", "assignment", "list", "--all", "--assignee", identity["principalId"])
    assert [item["scope"] for item in everything] == [vault["id"]]

    # The seed's user-assigned template, as az sends it (ARM's lenient JSON).
    deployed = az.json(
        "deployment", "group", "create", "--resource-group", "azg", "--name", "useras",
        "--template-file", str(TEMPLATES / "arm-template-user-assigned.json"), "--parameters",
        "workspaceName=azws", "dicomServiceName=azdicom", "keyVaultName=aztemplatevault", "keyName=aztemplatekey",
        "userAssignedIdentityName=aztemplateid", "roleAssignmentName=aztemplaterole", f"tenantId={admin['tenantId']}",
    )
    assert deployed["properties"]["provisioningState"] == "Succeeded"
    service_id = (f"/subscriptions/{admin['subscriptionId']}/resourceGroups/azg/providers/"
                  "Microsoft.HealthcareApis/workspaces/azws/dicomservices/azdicom")
    # The provider lookup gives az the API version; az rest reads the service.
    shown = az.json("resource", "show", "--ids", service_id)
    assert shown["properties"]["provisioningState"] == "Succeeded"
    service = az.json("rest", "--method", "get", "--url", f"{service_id}?api-version=2023-06-01-preview")
    service_url = service["properties"]["serviceUrl"]
    assert service["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"].startswith("https://")

    # The data plane through az rest, with a token for the DICOM audience.
    dataset = fresh_instance()
    server.http.verify = server.ca_path
    server.http.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would win over verify
    store(server, dataset, f"{service_url}/v2")
    studies = az.json("rest", "--method", "get", "--url", f"{service_url}/v2/studies",
                      "--resource", "https://dicom.healthcareapis.azure.com")
    assert [study["0020000D"]["Value"][0] for study in studies] == [dataset.StudyInstanceUID]
    assert_readable(server, dataset, f"{service_url}/v2")

    # The seed's system-assigned template on the bootstrap service, with its current key.
    default_service = (f"/subscriptions/{admin['subscriptionId']}/resourceGroups/default/providers/"
                       "Microsoft.HealthcareApis/workspaces/default/dicomservices/dicom")
    before = az.json("rest", "--method", "get", "--url", f"{default_service}?api-version=2023-06-01-preview")
    key_url = before["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]
    # The bootstrap resources are in an Azure region (the templates' default), not "local".
    assert before["location"] == "westus3"
    assert az.json("group", "show", "--name", "default")["location"] == "westus3"
    deployed = az.json(
        "deployment", "group", "create", "--resource-group", "default", "--name", "systemas",
        "--template-file", str(TEMPLATES / "arm-template-system-assigned.json"), "--parameters",
        "workspaceName=default", "dicomServiceName=dicom", f"keyEncryptionKeyUrl={key_url}",
    )
    assert deployed["properties"]["provisioningState"] == "Succeeded"
    after = az.json("rest", "--method", "get", "--url", f"{default_service}?api-version=2023-06-01-preview")
    assert after["identity"]["principalId"] == before["identity"]["principalId"]


def test_az_ad_apps_and_service_principals(https_hds, tmp_path):
    """`az ad app` and `az ad sp` against hds's Graph: registrations, service principals,
    secrets shown once, create-for-rbac with and without a role, and deletion."""
    server = https_hds
    admin = server.admin()
    az = Az(server, tmp_path / "az")
    az.sign_in(server)

    app = az.json("ad", "app", "create", "--display-name", "azapp")
    assert GUID.match(app["appId"]) and app["displayName"] == "azapp"
    assert [item["id"] for item in az.json("ad", "app", "list", "--display-name", "azapp")] == [app["id"]]
    assert az.json("ad", "app", "show", "--id", app["appId"])["id"] == app["id"]
    # Creating it again by name patches the one that exists, as in Azure.
    assert az.json("ad", "app", "create", "--display-name", "azapp")["id"] == app["id"]
    sp = az.json("ad", "sp", "create", "--id", app["appId"])
    assert sp["appId"] == app["appId"]
    assert az.json("ad", "sp", "show", "--id", app["appId"])["id"] == sp["id"]
    assert sp["id"] in [item["id"] for item in az.json("ad", "sp", "list", "--display-name", "azapp")]
    reset = az.json("ad", "sp", "credential", "reset", "--id", app["appId"])
    assert reset["appId"] == app["appId"] and reset["tenant"] == admin["tenantId"]
    assert server.token(client_id=app["appId"], client_secret=reset["password"])
    shown = az.json("ad", "sp", "show", "--id", app["appId"])
    assert len(shown["passwordCredentials"]) == 1 and shown["passwordCredentials"][0]["secretText"] is None
    assert reset["password"] not in json.dumps(shown)
    # A second reset replaces the secret: the first stops signing in.
    second = az.json("ad", "sp", "credential", "reset", "--id", app["appId"])
    refused = requests.post(f"{server.base}/{admin['tenantId']}/oauth2/v2.0/token", verify=server.ca_path, data={
        "grant_type": "client_credentials", "client_id": app["appId"], "client_secret": reset["password"],
        "scope": "https://dicom.healthcareapis.azure.com/.default"})
    assert refused.status_code == 401
    assert server.token(client_id=app["appId"], client_secret=second["password"])

    # create-for-rbac with a role on the bootstrap DICOM service, and without one.
    service_id = (f"/subscriptions/{admin['subscriptionId']}/resourceGroups/default/providers/"
                  "Microsoft.HealthcareApis/workspaces/default/dicomservices/dicom")
    viewer = az.json("ad", "sp", "create-for-rbac", "--name", "azviewer", "--role", "DICOM Data Reader",
                     "--scopes", service_id)
    assert viewer["tenant"] == admin["tenantId"] and viewer["password"]
    granted = az.json("role", "assignment", "list", "--assignee", viewer["appId"], "--scope", service_id)
    assert [item["roleDefinitionName"] for item in granted] == ["DICOM Data Reader"]
    bare = az.json("ad", "sp", "create-for-rbac", "--name", "azbare")
    assert bare["password"] and az.json("role", "assignment", "list", "--all", "--assignee", bare["appId"]) == []

    # The viewer signs in with az and reads the DICOM service; it may not register applications.
    viewer_az = Az(server, tmp_path / "viewer-az")
    viewer_az.sign_in(server, viewer["appId"], viewer["password"], "--allow-no-subscriptions")
    service = az.json("rest", "--method", "get", "--url", f"{service_id}?api-version=2023-06-01-preview")
    studies = viewer_az.run("rest", "--method", "get", "--url", f"{service['properties']['serviceUrl']}/v2/studies",
                            "--resource", "https://dicom.healthcareapis.azure.com")
    assert studies.returncode == 0
    denied = viewer_az.run("ad", "app", "create", "--display-name", "escalate", check=False)
    assert denied.returncode != 0 and "insufficient privileges" in denied.stderr.lower(), denied.stderr

    # Deletion: the service principal, then the applications.
    az.run("ad", "sp", "delete", "--id", bare["appId"])
    assert az.json("ad", "sp", "list", "--spn", bare["appId"]) == []
    az.run("ad", "app", "delete", "--id", bare["appId"])
    az.run("ad", "app", "delete", "--id", viewer["appId"])
    az.run("ad", "app", "delete", "--id", app["appId"])
    assert az.json("ad", "app", "list", "--all") == []
    assert az.json("ad", "sp", "list", "--spn", viewer["appId"]) == []


def test_graph_and_filters_refuse_hostile_input(https_hds):
    server = https_hds
    admin = server.admin()
    graph = f"{server.base}/v1.0/directoryObjects/getByIds"
    graph_token = server.token(resource=server.base)
    headers = {"Authorization": f"Bearer {graph_token}"}
    assert requests.post(graph, json={"ids": [admin["clientId"]]}, verify=server.ca_path).status_code == 401
    # A token for another audience is not a Graph token.
    wrong = {"Authorization": f"Bearer {server.token()}"}
    assert requests.post(graph, json={"ids": []}, headers=wrong, verify=server.ca_path).status_code == 401
    for body in [{"ids": ["not-a-guid"]}, {"ids": "x"}, {"nothing": []},
                 {"ids": [admin["tenantId"]] * 1001}]:
        response = requests.post(graph, json=body, headers=headers, verify=server.ca_path)
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == "Request_BadRequest"
    oversized = requests.post(graph, data=b"{" + b" " * (128 * 1024) + b"}", headers=headers, verify=server.ca_path)
    assert oversized.status_code == 413
    # Unknown ids are left out; types other than servicePrincipal find nothing here.
    answer = requests.post(graph, json={"ids": [admin["tenantId"]]}, headers=headers, verify=server.ca_path)
    assert answer.status_code == 200 and answer.json()["value"] == []

    arm = {"Authorization": f"Bearer {server.token(resource='https://management.azure.com')}"}
    base = f"{server.base}/subscriptions/{admin['subscriptionId']}/providers/Microsoft.Authorization"
    for path, query in [
        ("roleDefinitions", "$filter=description eq 'x'"),
        ("roleDefinitions", "$filter=roleName eq 'unterminated"),
        ("roleAssignments", "$filter=roleName eq 'Owner'"),
        ("roleAssignments", "$filter=" + "atScope() and " * 8 + "atScope()"),
        ("roleAssignments", "$filter=principalId eq '" + "a" * 2000 + "'"),
    ]:
        response = requests.get(f"{base}/{path}?api-version=2022-04-01&{query}", headers=arm, verify=server.ca_path)
        assert response.status_code == 400, (path, query, response.text)
        assert response.json()["error"]["code"] == "InvalidFilterInQueryString"
    named = requests.get(f"{base}/roleDefinitions?api-version=2022-04-01&$filter=roleName eq 'Key Vault Crypto Officer'",
                         headers=arm, verify=server.ca_path)
    assert [item["name"] for item in named.json()["value"]] == ["14b46e9e-c2b7-41b4-b07b-48a6ebf60603"]
    # The query parameter's name percent-encoded, as the JavaScript SDKs send it.
    encoded = requests.get(f"{server.base}/subscriptions/{admin['subscriptionId']}/resourcegroups?api%2Dversion=2021-04-01",
                           headers=arm, verify=server.ca_path)
    assert encoded.status_code == 200, encoded.text
    # A path nobody serves answers JSON.
    missing = requests.get(f"{server.base}/no/such/path", verify=server.ca_path)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NotFound"
