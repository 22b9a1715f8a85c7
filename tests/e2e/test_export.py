"""`POST export` to an Azurite container, read back with the real Azure Storage SDK
(`azure-storage-blob`): a study of pydicom's files arrives byte-identical to what was stored, at
Azure's paths (`{operation}/results/{study}/{series}/{sop}.dcm`); an identifier that finds
nothing is a line of `{operation}/errors.log`; the operation reports `results` and
`percentComplete`; a SAS-token container URI works too; hostile destinations are refused with
400 before anything is recorded; nothing of the export reaches the log."""

import datetime
import json

import pytest
from pydicom.uid import generate_uid

import azurite
from conftest import wait_for
from test_dicomweb import stow, to_bytes, unique_copy

azure_blob = pytest.importorskip("azure.storage.blob")

FILES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle_2frame.dcm"]


@pytest.fixture(scope="module")
def emulator():
    server = azurite.start_or_skip()
    yield server
    server.stop()


def connection_string(emulator) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={azurite.ACCOUNT};AccountKey={azurite.ACCOUNT_KEY};"
            f"BlobEndpoint={emulator.endpoint}/{azurite.ACCOUNT};")


def export_body(values, settings) -> dict:
    return {"source": {"type": "identifiers", "settings": {"values": values}},
            "destination": {"type": "azureblob", "settings": settings}}


def finished(hds, href) -> dict:
    def done():
        response = hds.http.get(href)
        # 202 while the operation runs, 200 once it has ended (as Azure answers).
        assert response.status_code in (200, 202), response.text
        body = response.json()
        if body["status"] in ("succeeded", "failed"):
            assert response.status_code == 200, response.text
            return body
        return None
    return wait_for(done, timeout=60, what="the export to finish")


def study_of(name_list, study):
    datasets = []
    series = generate_uid()
    for name in name_list:
        dataset = unique_copy(name)
        dataset.StudyInstanceUID = study
        dataset.SeriesInstanceUID = series
        datasets.append(dataset)
    return datasets


def test_export_a_study_to_azurite(hds_any_index, emulator):
    """On SQLite and on PostgreSQL: the operation's rows are the index's."""
    hds = hds_any_index
    container_name = "export-sqlite" if hds.index == "sqlite" else "export-postgres"
    emulator.create_container(container_name)
    study = generate_uid()
    datasets = study_of(FILES, study)
    payloads = [to_bytes(dataset) for dataset in datasets]
    response = stow(hds, payloads)
    assert response.status_code == 200, response.text[:300]
    missing = "1.2.826.0.1.3680043.10.4242.404"

    response = hds.http.post(f"{hds.url}/export", json=export_body(
        [study, missing],
        {"connectionString": connection_string(emulator), "blobContainerName": container_name}))
    assert response.status_code == 202, response.text
    reference = response.json()
    operation_id = reference["id"]
    assert len(operation_id) == 32
    assert reference["href"] == f"{hds.url}/operations/{operation_id}"
    assert response.headers["Location"] == reference["href"]

    operation = finished(hds, reference["href"])
    assert operation["status"] == "succeeded", operation
    assert operation["type"] == "export"
    assert operation["percentComplete"] == 100
    assert operation["results"]["exported"] == 3
    assert operation["results"]["skipped"] == 1
    assert operation["results"]["errorHref"] == (
        f"{emulator.endpoint}/{azurite.ACCOUNT}/{container_name}/{operation_id}/errors.log")

    container = azure_blob.ContainerClient.from_connection_string(connection_string(emulator), container_name)
    names = sorted(blob.name for blob in container.list_blobs(name_starts_with=f"{operation_id}/"))
    expected = sorted(f"{operation_id}/results/{study}/{d.SeriesInstanceUID}/{d.SOPInstanceUID}.dcm"
                      for d in datasets)
    assert names == sorted(expected + [f"{operation_id}/errors.log"])
    for dataset, payload in zip(datasets, payloads):
        name = f"{operation_id}/results/{study}/{dataset.SeriesInstanceUID}/{dataset.SOPInstanceUID}.dcm"
        exported = container.download_blob(name).readall()
        assert exported == payload, f"{name} differs from what was stored"
        # And from what hds serves as stored.
        stored = hds.http.get(
            f"{hds.url}/studies/{study}/series/{dataset.SeriesInstanceUID}/instances/{dataset.SOPInstanceUID}",
            headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert stored.status_code == 200 and stored.content == exported

    lines = container.download_blob(f"{operation_id}/errors.log").readall().decode().splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["Identifier"] == missing
    assert entry["Error"] == "The specified study cannot be found."
    datetime.datetime.fromisoformat(entry["Timestamp"].replace("Z", "+00:00"))

    # Nothing of the export in the log: no UID exported, no destination.
    logs = hds.logs()
    assert study not in logs and missing not in logs
    assert "devstoreaccount1" not in logs


def test_export_to_a_sas_container_uri(hds, emulator):
    emulator.create_container("export-sas")
    study = generate_uid()
    datasets = study_of(FILES[:2], study)
    payloads = [to_bytes(dataset) for dataset in datasets]
    assert stow(hds, payloads).status_code == 200
    sas = azure_blob.generate_container_sas(
        account_name=azurite.ACCOUNT, container_name="export-sas", account_key=azurite.ACCOUNT_KEY,
        permission=azure_blob.ContainerSasPermissions(read=True, write=True, create=True),
        expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
    uri = f"{emulator.endpoint}/{azurite.ACCOUNT}/export-sas?{sas}"
    series = datasets[0].SeriesInstanceUID
    only = datasets[1]
    response = hds.http.post(f"{hds.url}/export", json=export_body(
        [f"{study}/{series}/{only.SOPInstanceUID}"], {"blobContainerUri": uri}))
    assert response.status_code == 202, response.text
    operation_id = response.json()["id"]
    operation = finished(hds, response.json()["href"])
    assert operation["status"] == "succeeded", operation
    assert operation["results"]["exported"] == 1 and operation["results"]["skipped"] == 0
    assert "sig=" not in json.dumps(operation), "the SAS token is never served back"

    container = azure_blob.ContainerClient.from_container_url(uri)
    name = f"{operation_id}/results/{study}/{series}/{only.SOPInstanceUID}.dcm"
    assert container.download_blob(name).readall() == payloads[1]
    assert container.download_blob(f"{operation_id}/errors.log").readall() == b""
    signature = dict(pair.split("=", 1) for pair in sas.split("&"))["sig"]
    assert signature not in hds.logs()


def test_a_missing_container_fails_the_export(hds, emulator):
    study = generate_uid()
    assert stow(hds, [to_bytes(d) for d in study_of(FILES[:1], study)]).status_code == 200
    response = hds.http.post(f"{hds.url}/export", json=export_body(
        [study], {"connectionString": connection_string(emulator), "blobContainerName": "no-such-container"}))
    assert response.status_code == 202, response.text
    operation = finished(hds, response.json()["href"])
    assert operation["status"] == "failed", operation
    assert operation["results"]["exported"] == 0


HOSTILE = [
    # http off the machine, other schemes, hds's own listener (filled in below), user info.
    {"blobContainerUri": "http://198.51.100.7/acct/export?sv=1&sig=x"},
    {"blobContainerUri": "file:///etc/passwd"},
    {"blobContainerUri": "ftp://example.org/acct/export?sig=x"},
    "own-listener",
    {"blobContainerUri": "https://user:pass@acct1.blob.core.windows.net/export?sig=x"},
    # No credential (public container), an account key to a real account, a managed identity.
    {"blobContainerUri": "https://acct1.blob.core.windows.net/export"},
    {"connectionString": "AccountName=acct1;AccountKey=c2VjcmV0", "blobContainerName": "export"},
    {"blobContainerUri": "https://acct1.blob.core.windows.net/export?sig=x", "useManagedIdentity": True},
    # Conflicting, incomplete, malformed.
    {"blobContainerUri": "https://acct1.blob.core.windows.net/export?sig=x",
     "connectionString": "UseDevelopmentStorage=true"},
    {"connectionString": "UseDevelopmentStorage=true"},
    {"connectionString": "UseDevelopmentStorage=true", "blobContainerName": "../../etc"},
    {"connectionString": "AccountName=acct1;DevelopmentStorageProxyUri=http://x;SharedAccessSignature=sig=x",
     "blobContainerName": "export"},
    {"connectionString": "BlobEndpoint=http://10.0.0.1/acct;SharedAccessSignature=sig=x", "blobContainerName": "export"},
    {"blobContainerUri": "https://acct1.blob.core.windows.net/" + "a" * 5000 + "?sig=x"},
    {"blobContainerUri": "https://acct1.blob.core.windows.net/export?sig=x", "extra": "x"},
]


@pytest.mark.parametrize("settings", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_destinations_are_refused(hds, settings):
    if settings == "own-listener":
        settings = {"blobContainerUri": f"{hds.base}/devstoreaccount1/export?sv=1&sig=x"}
    response = hds.http.post(f"{hds.url}/export", json=export_body([generate_uid()], settings))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
    assert "sig=x" not in response.text and "c2VjcmV0" not in response.text


@pytest.mark.parametrize("body", [
    {},
    {"source": {"type": "identifiers", "settings": {"values": []}}},
    export_body(["../../x"], {"connectionString": "UseDevelopmentStorage=true", "blobContainerName": "export"}),
    export_body(["1.2/3/4/5"], {"connectionString": "UseDevelopmentStorage=true", "blobContainerName": "export"}),
    export_body(["1.2"] * 1001, {"connectionString": "UseDevelopmentStorage=true", "blobContainerName": "export"}),
    {"source": {"type": "query", "settings": {"values": ["1.2"]}},
     "destination": {"type": "azureblob", "settings": {"connectionString": "UseDevelopmentStorage=true",
                                                       "blobContainerName": "export"}}},
    export_body(["1.2"], {"connectionString": "UseDevelopmentStorage=true", "blobContainerName": "export"})
    | {"destination": {"type": "s3", "settings": {}}},
], ids=["empty", "no-values", "path", "too-deep", "too-many", "source-type", "destination-type"])
def test_hostile_bodies_are_refused(hds, body):
    response = hds.http.post(f"{hds.url}/export", json=body)
    assert response.status_code == 400, response.text


def test_body_limits(hds):
    response = hds.http.post(f"{hds.url}/export", data=b"{" + b" " * (300 * 1024) + b"}",
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    response = hds.http.post(f"{hds.url}/export", data=b"{}", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
