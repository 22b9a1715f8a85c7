"""The control plane's input, attacked from outside a real `hds up`: paths that smuggle a
separator or a control character, names Azure refuses, oversized and overdeep bodies, templates
built to exhaust the evaluator, a corrupt stored row, and an operation status read by a caller
without rights on the operation's resource. Every case asserts the refusal, that the process is
still alive, and that the seed's resources still list and the DICOM service still serves."""

import http.client
import json
import sqlite3
import time
import uuid

from conftest import ArmClient, ExternalIssuer, HdsServer, data_plane_status

RESOURCES_API = "2021-04-01"
ISSUER = "https://login.example.org/adversary/v2.0"


def raw(server, method, path, body=None, headers=None, expect_continue=False):
    """A request sent byte for byte as given: no client-side normalization of `.`/`..` or of
    percent escapes. Returns (status, parsed JSON body or None). With `expect_continue`, the
    body's length is declared but the body is sent only if the server asks for it (a server
    that refuses the length answers at once, and the client never writes into a closed socket)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        all_headers = {"Authorization": f"Bearer {server.token('https://management.azure.com')}",
                       "Content-Type": "application/json", **(headers or {})}
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in all_headers.items():
            connection.putheader(name, value)
        if payload is not None:
            connection.putheader("Content-Length", str(len(payload)))
        if expect_continue:
            connection.putheader("Expect", "100-continue")
        connection.endheaders()
        if payload is not None and not expect_continue:
            connection.send(payload)
        response = connection.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)
    finally:
        connection.close()


def assert_error(status, body, expected_status, code=None):
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert isinstance(body["error"].get("message"), str), body
    if code is not None:
        assert body["error"]["code"] == code, body


def assert_still_serving(server: HdsServer, arm: ArmClient):
    """The process lives, the seed's group lists, the seed's DICOM service answers searches."""
    assert server.process.poll() is None, "hds exited"
    groups = arm.get(f"{arm.subscription}/resourcegroups", api_version=RESOURCES_API)["value"]
    assert "default" in [group["name"] for group in groups]
    assert arm.get(arm.service_id())["properties"]["provisioningState"] == "Succeeded"
    assert data_plane_status(server)[0] == 200


def group_path(arm: ArmClient, name: str) -> str:
    return f"{arm.subscription}/resourceGroups/{name}?api-version={RESOURCES_API}"


def test_paths_that_smuggle_separators_dots_or_control_characters_are_refused(hds):
    arm = ArmClient(hds)
    for hostile in ["x%2Fy", "x%2fy", "x%00y", "x%0Ay", "x%0D%0Aevil", "x%09y", "x%7Fy", "%2E", "%2E%2E",
                    "x%E2%80%AEgpj.exe", "x%E2%80%8By", "x%EF%BB%BFy"]:
        status, body = raw(hds, "PUT", group_path(arm, hostile), {"location": "local"})
        assert_error(status, body, 400, "InvalidRequestUri")
    for hostile in [f"{arm.subscription}/resourceGroups/../resourceGroups/default?api-version={RESOURCES_API}",
                    f"{arm.subscription}/resourceGroups/./dot?api-version={RESOURCES_API}",
                    f"{arm.subscription}/resourceGroups/default/providers/Microsoft.KeyVault/vaults/../../../x"
                    f"?api-version=2022-07-01"]:
        status, body = raw(hds, "PUT", hostile, {"location": "local"})
        assert_error(status, body, 400, "InvalidRequestUri")
    # An encoded separator inside a resource's name, on reads and deletes too.
    vault = f"{arm.subscription}/resourceGroups/default/providers/Microsoft.KeyVault/vaults/a%2Fb?api-version=2022-07-01"
    for method in ("GET", "PUT", "DELETE"):
        status, body = raw(hds, method, vault, {"location": "local"} if method == "PUT" else None)
        assert_error(status, body, 400, "InvalidRequestUri")
    groups = [group["name"] for group in arm.get(f"{arm.subscription}/resourcegroups", api_version=RESOURCES_API)["value"]]
    assert all("/" not in name and "\x00" not in name for name in groups), groups
    assert_still_serving(hds, arm)
    # Nothing was stored that could stop the next start.
    assert hds.stop() == 0
    hds.start()
    assert_still_serving(hds, ArmClient(hds))


def test_names_azure_refuses_are_refused_and_names_it_accepts_are_kept(hds):
    arm = ArmClient(hds)
    refused = {
        "g" * 91: "InvalidResourceGroup",
        "ends-with-period.": "InvalidResourceGroup",
        "space%20inside": "InvalidResourceGroup",
        "star*": "InvalidResourceGroup",
        "%D8%A7%E2%80%AE": "InvalidRequestUri",  # right-to-left override
    }
    for name, code in refused.items():
        status, body = raw(hds, "PUT", group_path(arm, name), {"location": "local"})
        assert_error(status, body, 400, code)
    for name in ["g" * 90, "rg_(1).x-y", "%C3%84rzte-%E6%97%A5%E6%9C%AC"]:
        status, body = raw(hds, "PUT", group_path(arm, name), {"location": "local"})
        assert status == 201, (name, status, body)
    names = [group["name"] for group in arm.get(f"{arm.subscription}/resourcegroups", api_version=RESOURCES_API)["value"]]
    assert "Ärzte-日本" in names and "g" * 90 in names

    per_type = [
        (arm.workspace_id("w" * 25), {"location": "local"}, None, "InvalidWorkspaceName"),
        (arm.workspace_id("with-hyphen"), {"location": "local"}, None, "InvalidWorkspaceName"),
        (arm.service_id(service="-dicom"), {"location": "local"}, None, "InvalidDicomServiceName"),
        (arm.vault_id("kv--double"), {"location": "local"}, "2022-07-01", "VaultNameNotValid"),
        (arm.vault_id("1kv"), {"location": "local"}, "2022-07-01", "VaultNameNotValid"),
        (arm.identity_id("-identity"), {"location": "local"}, "2023-01-31", "InvalidResourceName"),
        (arm.identity_id("i" * 129), {"location": "local"}, "2023-01-31", "InvalidResourceName"),
        (f"{arm.vault_id()}/keys/under_score", {"properties": {"kty": "RSA"}}, "2022-07-01", "KeyNameNotValid"),
        (f"{arm.group()}/providers/Microsoft.Resources/deployments/{'d' * 65}",
         {"properties": {"mode": "Incremental", "template": {"resources": []}}}, RESOURCES_API, "InvalidDeploymentName"),
    ]
    for path, body, api_version, code in per_type:
        response = arm.request("PUT", path, body, **({"api_version": api_version} if api_version else {}))
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == code, (path, response.text)
    assert_still_serving(hds, arm)


def test_hostile_api_versions_are_refused_short(hds):
    arm = ArmClient(hds)
    for version in ["9" * 20000, "2022-07-01%00", "2022-07-01%E2%80%AE", "%FF%FE"]:
        status, body = raw(hds, "GET", f"{arm.subscription}/resourcegroups?api-version={version}")
        assert_error(status, body, 400, "InvalidApiVersionParameter")
        assert len(body["error"]["message"]) < 300
    assert_still_serving(hds, arm)


def test_oversized_and_overdeep_bodies_answer_an_arm_error(hds):
    arm = ArmClient(hds)
    path = group_path(arm, "big")
    padding = "x" * (4 * 1024 * 1024)
    oversized = json.dumps({"location": "local", "tags": {"p": padding}}).encode()
    status, body = raw(hds, "PUT", path, oversized, expect_continue=True)
    assert_error(status, body, 413, "RequestContentTooLarge")
    # A deployment body is the same size as a template at Azure's limit.
    template = {"properties": {"mode": "Incremental", "template": {"variables": {"v": padding}}}}
    status, body = raw(hds, "PUT", f"{arm.group()}/providers/Microsoft.Resources/deployments/big?api-version={RESOURCES_API}",
                       json.dumps(template).encode(), expect_continue=True)
    assert_error(status, body, 413, "RequestContentTooLarge")
    for depth in (100_000, 129, 65):
        nested = ('{"location":"local","properties":' + "[" * depth + "1" + "]" * depth + "}").encode()
        status, body = raw(hds, "PUT", path, nested)
        assert_error(status, body, 400, "InvalidRequestContent")
    status, body = raw(hds, "PUT", path, {"location": "local"})
    assert status == 201, body
    assert_still_serving(hds, arm)


def deploy(arm: ArmClient, name: str, template: dict):
    return arm.request("PUT", f"{arm.group()}/providers/Microsoft.Resources/deployments/{name}",
                       {"properties": {"mode": "Incremental", "template": template}}, api_version=RESOURCES_API)


def assert_limit(response, limit: str):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "InvalidTemplate", response.text
    assert limit in error["message"], error["message"]


def test_templates_built_to_exhaust_the_evaluator_are_refused(hds):
    arm = ArmClient(hds)
    # The output that aborted the whole process: `concat(` nested 100,000 deep.
    deep = "[" + "concat(" * 100_000 + "'x'" + ")" * 100_000 + "]"
    assert_limit(deploy(arm, "deep", {"outputs": {"o": {"type": "string", "value": deep}}}), "length of an expression")
    assert hds.process.poll() is None
    nested = "[" + "concat(" * 3000 + "'x'" + ")" * 3000 + "]"
    assert_limit(deploy(arm, "nested", {"outputs": {"o": {"type": "string", "value": nested}}}),
                 "nesting depth of an expression")

    # A string doubled 64 times: as a chain of 64 variables (deeper than evaluation nests), and
    # as 16 variables of 16 copies each (2^64 bytes again: the total evaluated size is capped).
    def doubling(levels, copies):
        variables = {"d0": "0123456789abcdef"}
        for index in range(1, levels + 1):
            variables[f"d{index}"] = "[concat(" + ", ".join([f"variables('d{index - 1}')"] * copies) + ")]"
        return {"variables": variables, "outputs": {"o": {"type": "int", "value": f"[length(variables('d{levels}'))]"}}}

    started = time.monotonic()
    assert_limit(deploy(arm, "doubling", doubling(64, 2)), "evaluation depth")
    assert_limit(deploy(arm, "sixteenfold", doubling(16, 16)), "evaluated size")
    assert time.monotonic() - started < 30
    assert hds.process.poll() is None

    big = {"big": {"type": "string", "defaultValue": "a" * 20000}}
    assert_limit(deploy(arm, "replace", {"parameters": big, "outputs": {"o": {"type": "string",
                 "value": "[replace(parameters('big'), 'a', parameters('big'))]"}}}), "evaluated size")
    assert_limit(deploy(arm, "format", {"parameters": big, "outputs": {"o": {"type": "string",
                 "value": "[format('" + "{0}" * 8000 + "', parameters('big'))]"}}}), "evaluated size")
    assert_limit(deploy(arm, "range", {"outputs": {"o": {"type": "array", "value": "[range(0, 100000000)]"}}}),
                 "count of 'range'")
    # Variables that use variables, deeper than the evaluator nests.
    chain = {f"v{index}": f"[createArray(variables('v{index + 1}'))]" for index in range(200)}
    chain["v200"] = "end"
    assert_limit(deploy(arm, "chain", {"variables": chain, "outputs": {"o": {"type": "array", "value": "[variables('v0')]"}}}),
                 "evaluation depth")

    def many(count, value):
        return {f"n{index}": value for index in range(count)}

    assert_limit(deploy(arm, "parameters", {"parameters": many(257, {"type": "int", "defaultValue": 1})}),
                 "number of parameters")
    assert_limit(deploy(arm, "variables", {"variables": many(257, 1)}), "number of variables")
    assert_limit(deploy(arm, "outputs", {"outputs": many(65, {"type": "int", "value": 1})}), "number of outputs")
    resources = [{"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": "2023-01-31",
                  "name": f"id{index}", "location": "local"} for index in range(801)]
    assert_limit(deploy(arm, "resources", {"resources": resources}), "number of resources")

    # Within the limits a template still deploys and finishes.
    fine = deploy(arm, "fine", {"variables": many(256, "[concat('a', 'b')]"),
                                "outputs": many(64, {"type": "string", "value": "[variables('n1')]"})})
    assert fine.status_code in (200, 201), fine.text

    def finished():
        state = arm.get(f"{arm.group()}/providers/Microsoft.Resources/deployments/fine",
                        api_version=RESOURCES_API)["properties"]["provisioningState"]
        return state if state in ("Succeeded", "Failed") else None

    deadline = time.monotonic() + 60
    while finished() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert finished() == "Succeeded"
    assert_still_serving(hds, arm)


def test_a_corrupt_stored_row_is_skipped_by_listings_and_startup(hds):
    arm = ArmClient(hds)
    arm.put_group("kept")
    assert hds.stop() == 0
    # Rows written behind hds's back: an id that reads back as another, tags that are not JSON.
    database = sqlite3.connect(hds.data_dir / "index.db")
    try:
        subscription = arm.subscription
        for resource_id, tags in [(f"{subscription}/resourceGroups/x/y", None),
                                  (f"{subscription}/resourceGroups/badtags", "{not json")]:
            database.execute(
                "INSERT INTO arm_resources (id_key, id, subscription_key, group_key, parent_key, type_key, "
                "resource_type, name, location, tags, properties, identity, sku, kind, provisioning_state, "
                "created_at, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (resource_id.lower(), resource_id, arm.subscription_id.lower(), "corrupt", subscription.lower(),
                 "microsoft.resources/resourcegroups", "Microsoft.Resources/resourceGroups", "corrupt", "local",
                 tags, "{}", None, None, None, "Succeeded", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"))
        database.commit()
    finally:
        database.close()
    hds.start()
    arm = ArmClient(hds)
    names = [group["name"] for group in arm.get(f"{arm.subscription}/resourcegroups", api_version=RESOURCES_API)["value"]]
    assert "kept" in names and "default" in names and "x/y" not in names, names
    assert_still_serving(hds, arm)
    log = hds.logs()
    assert "corrupt" in log and "badtags" not in log, "the log names the problem, not the row's values"


def test_an_operation_status_is_shown_only_to_who_may_read_its_resource(tmp_path):
    issuer = ExternalIssuer(tmp_path, ISSUER)
    server = HdsServer(tmp_path / "data", extra_args=issuer.flag()).start()
    try:
        arm = ArmClient(server)
        response = deploy(arm, "watched", {"resources": []})
        assert response.status_code == 201, response.text
        status_url = response.headers["Azure-AsyncOperation"]
        path = status_url[status_url.index("/subscriptions/"):]
        assert arm.session.get(f"{server.base}{path}").status_code == 200

        stranger = str(uuid.uuid4())
        token = issuer.token(issuer.user_claims("https://management.azure.com", stranger))
        import requests

        denied = requests.get(f"{server.base}{path}", headers={"Authorization": f"Bearer {token}"})
        assert denied.status_code == 404, denied.text
        assert denied.json()["error"]["code"] == "OperationNotFound"
        unknown = path.replace(path.split("/operationStatuses/")[1].split("?")[0], str(uuid.uuid4()))
        absent = arm.session.get(f"{server.base}{unknown}")
        assert absent.status_code == 404 and absent.json()["error"]["code"] == "OperationNotFound"
        assert denied.json()["error"]["message"].split("'")[0] == absent.json()["error"]["message"].split("'")[0]
        assert requests.get(f"{server.base}{path}").status_code == 401
        assert_still_serving(server, arm)
    finally:
        assert server.stop() == 0
