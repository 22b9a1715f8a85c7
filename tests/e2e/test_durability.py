"""Durability and resource bounds of a real `hds up`: a kill -9 in the middle of a load, and the
memory of a 1 GiB STOW-RS request."""

import copy
import io
import threading
import time

import numpy as np
import pydicom
import requests
from pydicom.uid import generate_uid

from conftest import HdsServer
from test_dicomweb import multipart_parts, stow, to_bytes, unique_copy


def test_kill_9_keeps_every_acknowledged_instance(tmp_path, any_index):
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir, index=any_index).start()
    acknowledged = {}
    stop = threading.Event()
    template = unique_copy("CT_small.dcm")

    def load():
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {server.token()}"
        while not stop.is_set():
            dataset = copy.deepcopy(template)
            dataset.SOPInstanceUID = generate_uid()
            dataset.SeriesInstanceUID = generate_uid()
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            body = to_bytes(dataset)
            try:
                boundary = "b"
                payload = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body + f"\r\n--{boundary}--\r\n".encode()
                response = session.post(
                    f"{server.url}/studies", data=payload,
                    headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
                    timeout=30,
                )
            except requests.RequestException:
                # After the kill, the end of this loader; before it, a store slower than the
                # timeout on a busy machine, which must not end the load early.
                continue
            if response.status_code == 200:
                acknowledged[dataset.SOPInstanceUID] = (dataset.SeriesInstanceUID, body)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.time() + 30
    while len(acknowledged) < 40 and time.time() < deadline:
        time.sleep(0.05)
    server.kill()  # SIGKILL, mid-load
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acknowledged) >= 40

    restarted = HdsServer(data_dir, index=any_index).start()
    try:
        study = template.StudyInstanceUID
        for sop, (series, body) in acknowledged.items():
            url = f"{restarted.url}/studies/{study}/series/{series}/instances/{sop}"
            response = restarted.http.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
            assert response.status_code == 200, "an acknowledged instance was lost"
            assert response.content == body
        # Whatever the index shows is whole: every listed instance can be retrieved.
        listed = []
        offset = 0
        while True:
            page = restarted.http.get(f"{restarted.url}/instances", params={"limit": 200, "offset": offset}).json()
            listed += page
            if len(page) < 200:
                break
            offset += 200
        assert len(listed) >= len(acknowledged)
        for item in listed:
            series = item["0020000E"]["Value"][0]
            sop = item["00080018"]["Value"][0]
            url = f"{restarted.url}/studies/{study}/series/{series}/instances/{sop}"
            response = restarted.http.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
            assert response.status_code == 200
            assert pydicom.dcmread(io.BytesIO(response.content)).SOPInstanceUID == sop
    finally:
        assert restarted.stop() == 0


def large_instance(rows: int, columns: int, frames: int = 1) -> bytes:
    dataset = unique_copy("CT_small.dcm")
    dataset.Rows = rows
    dataset.Columns = columns
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.SamplesPerPixel = 1
    if frames > 1:
        dataset.NumberOfFrames = frames
    pixels = np.random.default_rng(7).integers(0, 65535, size=rows * columns * frames, dtype=np.uint16)
    dataset.PixelData = pixels.tobytes()
    return to_bytes(dataset)


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    """Starts VmHWM over from the current RSS (proc(5), clear_refs "5"), so the peak read after a
    request is that request's, not start-up's: start-up may peak higher and hand the memory back
    before the request begins."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def test_one_gib_stow_keeps_memory_bounded(hds):
    eight_mib = large_instance(2048, 2048)                # 8 MiB of pixels each
    big = large_instance(2048, 2048, frames=16)           # one 128 MiB instance, parsed from its blob
    parts = 112
    boundary = "hds-large"
    total = 0

    def body():
        nonlocal total
        for index in range(parts):
            dataset = pydicom.dcmread(io.BytesIO(eight_mib))
            # Distinct SOP instances without re-encoding 8 MiB of pixels each time: patch UIDs.
            dataset.SOPInstanceUID = generate_uid()
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            payload = to_bytes(dataset)
            chunk = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + payload + b"\r\n"
            total += len(chunk)
            yield chunk
        chunk = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + big + b"\r\n"
        total += len(chunk)
        yield chunk
        yield f"--{boundary}--\r\n".encode()

    # One 8 MiB STOW first: a process's first large store brings one-time costs (the allocator's
    # per-thread heaps and segments, blocking-pool threads, the keyring opened) that say nothing
    # about whether memory follows the body's size, which is what is measured here.
    warm_up = pydicom.dcmread(io.BytesIO(eight_mib))
    warm_up.SOPInstanceUID = generate_uid()
    warm_up.file_meta.MediaStorageSOPInstanceUID = warm_up.SOPInstanceUID
    assert stow(hds, [to_bytes(warm_up)]).status_code == 200

    pid = hds.process.pid
    reset_peak_rss(pid)
    before = vm_kib(pid, "VmRSS")
    response = hds.http.post(
        f"{hds.url}/studies", data=body(),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=600,
    )
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["00081199"]["Value"]) == parts + 1
    assert total >= 1024 * 1024 * 1024
    peak = vm_kib(pid, "VmHWM")
    growth_mib = (peak - before) / 1024
    print(f"RSS before {before // 1024} MiB, peak {peak // 1024} MiB, growth {growth_mib:.0f} MiB for {total / 2**20:.0f} MiB")
    assert growth_mib < 100, f"a 1 GiB STOW raised RSS by {growth_mib:.0f} MiB"
    # The 128 MiB instance's frames come back from the frame map.
    dataset = pydicom.dcmread(io.BytesIO(big))
    frame_size = 2048 * 2048 * 2
    url = f"{hds.url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}/instances/{dataset.SOPInstanceUID}/frames/16"
    frame = hds.http.get(url, headers={"Accept": "application/octet-stream"})
    assert frame.status_code == 200
    assert frame.content == dataset.PixelData[15 * frame_size:16 * frame_size]


def test_request_size_limit(tmp_path):
    server = HdsServer(tmp_path / "data", extra_args=["--max-request-bytes", "100000"]).start()
    try:
        body = to_bytes(unique_copy("US1_UNCR.dcm"))
        response = stow(server, [body])
        assert response.status_code == 413
        assert stow(server, [to_bytes(unique_copy("CT_small.dcm"))]).status_code == 200
    finally:
        assert server.stop() == 0


def test_https_with_the_local_ca(tmp_path):
    server = HdsServer(tmp_path / "data", http=False).start()
    try:
        ct = unique_copy("CT_small.dcm")
        # Per request, not Session.verify: REQUESTS_CA_BUNDLE in the environment would win over it.
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {server.token()}"
        boundary = "x"
        payload = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + to_bytes(ct) + f"\r\n--{boundary}--\r\n".encode()
        stored = session.post(f"{server.url}/studies", data=payload, verify=server.ca_path,
                              headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert stored.status_code == 200
        retrieved = session.get(f"{server.url}/studies/{ct.StudyInstanceUID}", verify=server.ca_path,
                                headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert multipart_parts(retrieved) == [to_bytes(ct)]
        # Without the CA the certificate is refused.
        try:
            requests.get(f"{server.url}/studies", verify=True)
            raise AssertionError("a certificate from the local CA must not be trusted by default")
        except requests.exceptions.SSLError:
            pass
    finally:
        assert server.stop() == 0
