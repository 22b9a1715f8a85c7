"""Least privilege with principals of one's own: the bootstrap admin registers a viewer
application through Microsoft Graph (as `az ad sp create-for-rbac` does), gives its service
principal DICOM Data Reader on one DICOM service, and the viewer can read there (QIDO, WADO),
cannot write (STOW 403) and cannot read another service (403). Deleting the application
revokes its access. Plain HTTP, so every status is the server's own."""

import io

import requests

from conftest import ArmClient, fresh_instance, key_url_of, store, wait_for

DICOM = "https://dicom.healthcareapis.azure.com"
DICOM_DATA_READER = "e89c7a3c-2f64-4fa1-a847-3e4c9ba4283a"
BOUNDARY = "hds-e2e-boundary"


def graph_session(server, client_id=None, client_secret=None) -> requests.Session:
    session = requests.Session()
    token = server.token(resource=server.base, client_id=client_id, client_secret=client_secret)
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def stow_body(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue()
            + f"\r\n--{BOUNDARY}--\r\n".encode())


def register_viewer(server, graph: requests.Session, name: str) -> dict:
    """An application, its service principal and a client secret, through Graph."""
    app = graph.post(f"{server.base}/v1.0/applications", json={"displayName": name, "keyCredentials": []})
    assert app.status_code == 201, app.text
    sp = graph.post(f"{server.base}/v1.0/servicePrincipals", json={"appId": app.json()["appId"], "accountEnabled": True})
    assert sp.status_code == 201, sp.text
    password = graph.post(f"{server.base}/v1.0/applications/{app.json()['id']}/addPassword",
                          json={"passwordCredential": {"displayName": "e2e"}})
    assert password.status_code == 200, password.text
    assert password.headers.get("Cache-Control") == "no-store"
    return {"app": app.json(), "sp": sp.json(), "secret": password.json()["secretText"]}


def test_a_viewer_app_reads_one_service_only(hds):
    server = hds
    arm = ArmClient(server)
    graph = graph_session(server)

    # A second DICOM service under the seed's key, through a user-assigned identity.
    identity = arm.put_identity("otherid")
    arm.grant(identity["properties"]["principalId"], arm.vault_id())
    other_id = arm.service_id(service="other")
    user_assigned = {"type": "UserAssigned", "userAssignedIdentities": {arm.identity_id("otherid"): {}}}
    created = arm.put_service(other_id, key_url_of(arm.get(arm.service_id())), user_assigned)
    assert created.status_code in (200, 201), created.text
    other_url = created.json()["properties"]["serviceUrl"] + "/v2"
    mine, theirs = fresh_instance(), fresh_instance()
    store(server, mine)
    store(server, theirs, other_url)

    viewer = register_viewer(server, graph, "viewer")
    app_id, sp_id = viewer["app"]["appId"], viewer["sp"]["id"]
    arm.grant(sp_id, arm.service_id(), DICOM_DATA_READER)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {server.token(DICOM, app_id, viewer['secret'])}"

    # Reads where granted.
    found = session.get(f"{server.url}/studies", params={"StudyInstanceUID": mine.StudyInstanceUID})
    assert found.status_code == 200, found.text
    assert [study["0020000D"]["Value"][0] for study in found.json()] == [mine.StudyInstanceUID]
    instance = (f"{server.url}/studies/{mine.StudyInstanceUID}/series/{mine.SeriesInstanceUID}"
                f"/instances/{mine.SOPInstanceUID}")
    wado = session.get(instance, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert wado.status_code == 200, wado.text
    assert mine.SOPInstanceUID.encode() in wado.content

    # Cannot write there.
    stow = session.post(f"{server.url}/studies", data=stow_body(fresh_instance()),
                        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                                 "Accept": "application/dicom+json"})
    assert stow.status_code == 403, stow.text
    assert session.delete(instance).status_code == 403

    # Cannot read another service.
    elsewhere = session.get(f"{other_url}/studies", params={"StudyInstanceUID": theirs.StudyInstanceUID})
    assert elsewhere.status_code == 403, elsewhere.text
    assert session.get(f"{other_url}/studies/{theirs.StudyInstanceUID}/metadata").status_code == 403

    # Cannot mint principals of its own, nor list them.
    viewer_graph = graph_session(server, app_id, viewer["secret"])
    refused = viewer_graph.post(f"{server.base}/v1.0/applications", json={"displayName": "escalate"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "Authorization_RequestDenied"
    assert viewer_graph.get(f"{server.base}/v1.0/servicePrincipals").status_code == 403

    # Deleting the application revokes its access (at once on this node; the bound is 5 s).
    deleted = graph.delete(f"{server.base}/v1.0/applications/{viewer['app']['id']}")
    assert deleted.status_code == 204
    wait_for(lambda: session.get(f"{server.url}/studies").status_code in (401, 403), timeout=15,
             what="the deleted viewer to be refused")
    gone = requests.post(f"{server.base}/{arm.tenant_id}/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": app_id, "client_secret": viewer["secret"],
        "scope": f"{DICOM}/.default"})
    assert gone.status_code == 401

    # Every change was recorded in the audit log (Entra's directory actions, as its audit logs
    # name them; not in the subscription's activity log), and the viewer's refused attempt too,
    # by its service principal's id. No secret in any record.
    from test_audit import listed

    records = [(record["operation"], record["outcome"], record["principalId"])
               for record in listed(server.data_dir) if record["operation"].startswith("microsoft.directory/")]
    operations = {operation for operation, _, _ in records}
    assert {"microsoft.directory/applications/create", "microsoft.directory/servicePrincipals/create",
            "microsoft.directory/applications/credentials/update",
            "microsoft.directory/applications/delete"} <= operations, records
    assert ("microsoft.directory/applications/create", "denied", sp_id) in records, records
    assert viewer["secret"] not in str(listed(server.data_dir))


def test_graph_refuses_hostile_input(hds):
    server = hds
    graph = graph_session(server)
    base = f"{server.base}/v1.0"
    for body in [{"displayName": "x" * 257}, {"displayName": ""}, {"displayName": "a\u0007"},
                 {"displayName": ["list"]}, {"displayName": "x", "passwordCredentials": [{"secretText": "mine"}]},
                 {"web": {"redirectUris": ["https://evil.example"]}}]:
        response = graph.post(f"{base}/applications", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["code"] == "Request_BadRequest"
    assert graph.post(f"{base}/applications", data=b"{not json").status_code == 400
    assert graph.post(f"{base}/applications", data=b'{"displayName":"' + b"x" * 20000 + b'"}').status_code == 413
    for query in ["$filter=passwordCredentials/any(c:c eq 'x')", "$filter=appId eq 'x", "$top=100000",
                  "$orderby=displayName", "$filter=" + "appId eq 'a' and " * 8 + "appId eq 'a'"]:
        response = graph.get(f"{base}/applications?{query}")
        assert response.status_code == 400, (query, response.text)
    assert graph.get(f"{base}/applications/..%2F..%2Fetc").status_code in (400, 404)
    assert graph.post(f"{base}/servicePrincipals", json={"appId": "00000000-0000-0000-0000-000000000000"}).status_code == 400
    app = graph.post(f"{base}/applications", json={"displayName": "hostile"}).json()
    add = f"{base}/applications/{app['id']}/addPassword"
    for credential in [{"endDateTime": "2000-01-01T00:00:00Z"}, {"endDateTime": "9999-01-01T00:00:00Z"},
                       {"endDateTime": "not a date"}, {"displayName": "d" * 300}, {"secretText": "chosen"}]:
        response = graph.post(add, json={"passwordCredential": credential})
        assert response.status_code == 400, (credential, response.text)
    remove = f"{base}/applications/{app['id']}/removePassword"
    assert graph.post(remove, json={"keyId": "not-a-guid"}).status_code == 400
    assert graph.post(remove, json={"keyId": "00000000-0000-0000-0000-000000000000"}).status_code == 404
    # Paging: $top and the next link.
    for index in range(3):
        assert graph.post(f"{base}/applications", json={"displayName": f"page{index}"}).status_code == 201
    first = graph.get(f"{base}/applications", params={"$top": "2"}).json()
    assert len(first["value"]) == 2 and "@odata.nextLink" in first
    rest = graph.get(first["@odata.nextLink"]).json()
    ids = [item["id"] for item in first["value"] + rest["value"]]
    assert len(ids) == len(set(ids)) == 4
