"""`hds up --blob-store az://...` against Azurite: real DICOM files stored, retrieved byte for
byte, read by frames (ranged reads of a sealed blob larger than one multipart part), deleted,
orphans swept, and nothing from an instance in the clear in the container. Wrong
`--blob-store` values stop the start with a clear message."""

import os
import pathlib
import subprocess

import numpy
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import azurite
from conftest import HDS_BIN, HdsServer, wait_for
from test_dicomweb import multipart_parts, stow, to_bytes
from test_no_plaintext import hits, marked, markers_of

CONTAINER = "hds-e2e"
PREFIX = "node-blobs"


@pytest.fixture(scope="module")
def emulator():
    server = azurite.start_or_skip()
    yield server
    server.stop()


def large_multiframe(study: str):
    """An uncompressed 16-bit instance of 6 frames of 1024 x 1024 (12 MiB of pixel data): its
    sealed blob streams as a multipart upload of more than one part."""
    dataset = marked("CT_small.dcm", study)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    frames = 6
    dataset.Rows, dataset.Columns, dataset.NumberOfFrames = 1024, 1024, frames
    rng = numpy.random.default_rng(13)
    dataset.PixelData = rng.integers(0, 4096, size=frames * 1024 * 1024, dtype=numpy.uint16).tobytes()
    return dataset


def instance_url(hds, dataset) -> str:
    return (f"{hds.url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
            f"/instances/{dataset.SOPInstanceUID}")


def test_dicomweb_on_azure_blob_storage_keeps_only_ciphertext(emulator, tmp_path, monkeypatch):
    emulator.create_container(CONTAINER)
    for name, value in emulator.environment().items():
        monkeypatch.setenv(name, value)
    hds = HdsServer(tmp_path / "data", extra_args=["--blob-store", f"az://{CONTAINER}/{PREFIX}"]).start()
    try:
        study = generate_uid()
        big = large_multiframe(study)
        datasets = [marked("SC_rgb_rle_2frame.dcm", study), big, marked("MR_small.dcm", generate_uid())]
        payloads = [to_bytes(dataset) for dataset in datasets]
        response = stow(hds, payloads)
        assert response.status_code == 200, response.text[:300]
        assert "00081198" not in response.json(), "no instance failed"

        # Each instance comes back as stored, byte for byte.
        for dataset, payload in zip(datasets, payloads):
            got = hds.http.get(instance_url(hds, dataset), headers={"Accept": "application/dicom; transfer-syntax=*"})
            assert got.status_code == 200, got.text[:300]
            assert got.content == payload
        # Frames of the large instance: ranged reads of its sealed blob.
        frame_size = 1024 * 1024 * 2
        got = hds.http.get(f"{instance_url(hds, big)}/frames/2,6",
                           headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        assert got.status_code == 200, got.text[:300]
        assert multipart_parts(got) == [big.PixelData[frame_size:2 * frame_size], big.PixelData[5 * frame_size:]]

        # The container holds one blob per instance, under the prefix, and nothing in the clear.
        listed = emulator.list_blobs(CONTAINER)
        assert len(listed) == 3, listed
        assert all(name.startswith(f"{PREFIX}/") for name in listed), listed
        markers = markers_of(datasets)
        for name in listed:
            contents = emulator.get_blob(CONTAINER, name)
            assert hits(contents, markers) == [], f"plaintext in {name}"
        assert not (tmp_path / "data" / "blobs").exists(), "no blob is written to the data dir"

        # A delete removes the instance's blob from the container.
        assert hds.http.delete(f"{hds.url}/studies/{datasets[2].StudyInstanceUID}").status_code == 204
        wait_for(lambda: len(emulator.list_blobs(CONTAINER)) == 2, timeout=60, what="the deleted blob to go")
        for dataset, payload in zip(datasets[:2], payloads[:2]):
            got = hds.http.get(instance_url(hds, dataset), headers={"Accept": "application/dicom; transfer-syntax=*"})
            assert got.status_code == 200 and got.content == payload
    finally:
        assert hds.stop() == 0
    assert hits(pathlib.Path(hds.log_path).read_bytes(), markers) == [], "plaintext in the server log"

    # A blob no index row names (what a crash between a blob's upload and its index commit
    # leaves) is swept from the object store; the referenced blobs stay.
    referenced = set(emulator.list_blobs(CONTAINER))
    orphan = f"{PREFIX}/ab/ab{os.urandom(15).hex()}"
    emulator.put_blob(CONTAINER, orphan, os.urandom(100))
    sweeping = HdsServer(tmp_path / "data", extra_args=[
        "--blob-store", f"az://{CONTAINER}/{PREFIX}", "--orphan-grace", "1s", "--sweep-interval", "1s",
    ]).start()
    try:
        wait_for(lambda: orphan not in emulator.list_blobs(CONTAINER), timeout=90, what="the orphan to be swept")
        assert set(emulator.list_blobs(CONTAINER)) == referenced
        for dataset, payload in zip(datasets[:2], payloads[:2]):
            got = sweeping.http.get(instance_url(sweeping, dataset),
                                    headers={"Accept": "application/dicom; transfer-syntax=*"})
            assert got.status_code == 200 and got.content == payload
    finally:
        assert sweeping.stop() == 0


def start_failure(tmp_path, blob_store: str, environment: dict) -> str:
    """`hds up --blob-store blob_store` must refuse to start; its stderr."""
    data_dir = tmp_path / "refused"
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AZURE_", "AWS_", "AZURITE_"))}
    env.update(environment)
    result = subprocess.run(
        [HDS_BIN, "up", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--http", "--blob-store", blob_store],
        capture_output=True, env=env, timeout=120,
    )
    assert result.returncode != 0
    return result.stderr.decode(errors="replace")


def test_wrong_blob_stores_stop_the_start_with_the_reason(emulator, tmp_path):
    message = start_failure(tmp_path, "gs://bucket", {})
    assert "unsupported scheme" in message and "az://" in message
    assert not (tmp_path / "refused").exists(), "nothing is created before the flag is accepted"
    message = start_failure(tmp_path, "https://acct1.blob.core.windows.net/c1c?sv=1&sig=SECRETSIG", {})
    assert "AZURE_STORAGE_SAS_KEY" in message and "SECRETSIG" not in message
    message = start_failure(tmp_path, "az://blobs", {"AZURE_STORAGE_ACCOUNT_NAME": "acct1"})
    assert "no credentials" in message
    message = start_failure(tmp_path, "s3://bucket", {})
    assert "no credentials" in message and "AWS_ACCESS_KEY_ID" in message
    # Credentials for a container that does not exist: the startup check says so.
    message = start_failure(tmp_path, "az://no-such-container", emulator.environment())
    assert "startup check failed" in message
