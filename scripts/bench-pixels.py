#!/usr/bin/env python3
"""Pixel data services, hds against Orthanc + its DICOMweb and GDCM plugins, same files, same
client.

Stores `--copies` copies (fresh UIDs) of each pydicom-data file named below in a fresh `hds up`
(release build, plain HTTP) and a fresh Orthanc, then, with `--concurrency` client threads:
- `rendered`: GET .../instances/{i}/rendered as image/jpeg;
- `viewport`: the same with `viewport=200,200` (a thumbnail's size);
- `transcode`: GET .../instances/{i} as multipart/related application/dicom with
  `transfer-syntax=1.2.840.10008.1.2.1` (Explicit VR Little Endian), asked of both by name;
- `to-j2k`: the same with `transfer-syntax=1.2.840.10008.1.2.4.90` (JPEG 2000 lossless: as
  stored for a JPEG 2000 file, encoded for the others).
Prints requests/s and p50/p99 per server and phase, and the ratio hds/Orthanc.

The load comes from `hds-bench`'s `get` phase (`--bench`, a release build: a new connection per
request for both servers, since Orthanc closes some kept-alive connections under load), or with
`--client python` from Python threads, whose own CPU (one core at most, under the GIL) then
caps both servers at small images.

Usage: scripts/bench-pixels.py [--hds target/release/hds] [--bench target/release/hds-bench]
       [--client hds-bench|python] [--copies 20] [--requests 400] [--concurrency 8]
       [--file MR2_J2KR.dcm] [--file CT_small.dcm]
"""

import argparse
import concurrent.futures
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not start")


def start_hds(binary, work):
    port = free_port()
    data = os.path.join(work, "hds")
    log = open(os.path.join(work, "hds.log"), "w")
    process = subprocess.Popen([binary, "up", "--data-dir", data, "--listen", f"127.0.0.1:{port}", "--http"],
                               stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    token = {}

    def ready():
        if "value" not in token:
            out = subprocess.run([binary, "account", "get-access-token", "--data-dir", data, "--endpoint", endpoint,
                                  "--resource", "https://dicom.healthcareapis.azure.com"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                return False
            token["value"] = json.loads(out.stdout)["accessToken"]
        response = requests.get(f"{endpoint}/dicom/default/dicom/v2/studies?limit=1",
                                headers={"Authorization": f"Bearer {token['value']}"})
        return response.status_code == 200

    wait_until(ready, "hds")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token['value']}"
    return process, f"{endpoint}/dicom/default/dicom/v2", session


def orthanc_plugins():
    """DICOMweb, and GDCM (Debian's orthanc-gdcm), without which Orthanc decodes no JPEG 2000."""
    dicomweb = os.environ.get("ORTHANC_DICOMWEB_PLUGIN", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
    gdcm = os.environ.get("ORTHANC_GDCM_PLUGIN", "/usr/share/orthanc/plugins/libOrthancGdcm.so")
    if not os.path.exists(gdcm):
        sys.exit(f"no GDCM plugin at {gdcm}: apt-get install -y orthanc-gdcm (or set ORTHANC_GDCM_PLUGIN)")
    return [dicomweb, gdcm]


def start_orthanc(work):
    port = free_port()
    storage = os.path.join(work, "orthanc")
    os.makedirs(storage)
    config = os.path.join(work, "orthanc.json")
    with open(config, "w") as out:
        json.dump({"Name": "hds-bench-pixels", "StorageDirectory": storage, "IndexDirectory": storage,
                   "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
                   "AuthenticationEnabled": False, "SaveJobs": False,
                   "Plugins": orthanc_plugins(),
                   "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False}}, out)
    log = open(os.path.join(work, "orthanc.log"), "w")
    process = subprocess.Popen([os.environ.get("ORTHANC", "Orthanc"), config], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/dicom-web"
    wait_until(lambda: requests.get(f"{base}/studies?limit=1").status_code == 200, "Orthanc")
    return process, base, requests.Session()


def copies(name, count):
    for _ in range(count):
        dataset = pydicom.dcmread(get_testdata_file(name))
        dataset.StudyInstanceUID = generate_uid()
        dataset.SeriesInstanceUID = generate_uid()
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        yield dataset, buffer.getvalue()


def stow(session, base, body):
    boundary = "bench-pixels"
    data = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body
            + f"\r\n--{boundary}--\r\n".encode())
    response = session.post(f"{base}/studies", data=data, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text


def run_phase(session, base, urls, accept, requests_total, concurrency):
    latencies = []

    def one(index):
        url = urls[index % len(urls)]
        started = time.perf_counter()
        # A connection per request, for both servers alike: Orthanc closes some kept-alive
        # connections under this load, which a shared pool would report as failures.
        response = requests.get(f"{base}/{url}", headers={**session.headers, "Accept": accept})
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, (url, response.status_code, response.text[:200])
        return elapsed

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, range(requests_total)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"req_s": requests_total / wall, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def run_phase_bench(bench, work, session, base, urls, accept, requests_total, concurrency):
    """The same phase, loaded by `hds-bench --phases get` (a new connection per request)."""
    paths = os.path.join(work, "paths.txt")
    with open(paths, "w") as out:
        out.write("\n".join(urls) + "\n")
    environment = dict(os.environ)
    authorization = session.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        environment["HDS_BENCH_TOKEN"] = authorization[len("Bearer "):]
    else:
        environment.pop("HDS_BENCH_TOKEN", None)
    out = subprocess.run([bench, "--base-url", base, "--phases", "get", "--paths", paths, "--accept", accept,
                          "--requests", str(requests_total), "--concurrency", str(concurrency),
                          "--no-keep-alive", "--json"],
                         capture_output=True, text=True, env=environment)
    assert out.returncode == 0, out.stderr[-300:]
    (phase,) = json.loads(out.stdout)["phases"]
    return {"req_s": phase["requests_per_s"], "p50_ms": phase["latency"]["p50_ms"],
            "p99_ms": phase["latency"]["p99_ms"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hds", default="target/release/hds")
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--file", action="append", dest="files")
    parser.add_argument("--bench", default="target/release/hds-bench")
    parser.add_argument("--client", choices=["hds-bench", "python"], default="hds-bench")
    arguments = parser.parse_args()
    files = arguments.files or ["MR2_J2KR.dcm"]
    work = tempfile.mkdtemp(prefix="bench-pixels-")
    servers = {}
    try:
        servers["hds"] = start_hds(arguments.hds, work)
        servers["orthanc"] = start_orthanc(work)
        stored = []
        for name in files:
            for dataset, body in copies(name, arguments.copies):
                for _, base, session in servers.values():
                    stow(session, base, body)
                stored.append(f"studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
                              f"/instances/{dataset.SOPInstanceUID}")
        phases = {
            "rendered": ([f"{url}/rendered" for url in stored], {"hds": "image/jpeg", "orthanc": "image/jpeg"}),
            "viewport": ([f"{url}/rendered?viewport=200,200" for url in stored],
                         {"hds": "image/jpeg", "orthanc": "image/jpeg"}),
            "transcode": (stored, {name: f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'
                                   for name in ("hds", "orthanc")}),
            "to-j2k": (stored, {name: f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_2000_LOSSLESS}'
                                for name in ("hds", "orthanc")}),
        }
        print(f"files {files}, {arguments.copies} copies each, {arguments.requests} requests per phase, "
              f"concurrency {arguments.concurrency}, client {arguments.client}")
        for phase, (urls, accepts) in phases.items():
            results = {}
            # Interleaved, twice each: A B A B, medians of the two.
            runs = {name: [] for name in servers}
            failed = {}
            for _ in range(2):
                for name, (_, base, session) in servers.items():
                    if name in failed:
                        continue
                    try:
                        if arguments.client == "python":
                            measured = run_phase(session, base, urls, accepts[name], arguments.requests,
                                                 arguments.concurrency)
                        else:
                            measured = run_phase_bench(arguments.bench, work, session, base, urls, accepts[name],
                                                       arguments.requests, arguments.concurrency)
                        runs[name].append(measured)
                    except (AssertionError, requests.RequestException) as error:
                        failed[name] = str(error)[:300]
            for name, reason in failed.items():
                print(f"{phase:10} {name:8} FAILED: {reason}")
                runs.pop(name)
            for name, measured in runs.items():
                results[name] = {key: statistics.median(run[key] for run in measured) for key in measured[0]}
                print(f"{phase:10} {name:8} {results[name]['req_s']:8.1f} req/s  p50 {results[name]['p50_ms']:7.1f} ms"
                      f"  p99 {results[name]['p99_ms']:7.1f} ms  (runs: "
                      + ", ".join(f"{run['req_s']:.1f}" for run in measured) + ")")
            if failed:
                continue
            print(f"{phase:10} ratio hds/orthanc: {results['hds']['req_s'] / results['orthanc']['req_s']:.2f} (req/s), "
                  f"{results['orthanc']['p50_ms'] / results['hds']['p50_ms']:.2f} (p50)")
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
