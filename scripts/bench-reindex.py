#!/usr/bin/env python3
"""Reindex of an extended query tag: how long it takes for N stored instances, and STOW-RS
throughput while it runs.

Starts a fresh `hds up` (plain HTTP, SQLite unless --index names a PostgreSQL URL), stores N
copies (fresh UIDs) of pydicom-data's CT_small.dcm in multipart requests of --batch. Then
`hds-bench` stores a synthetic corpus for --load-seconds at its own pace while this script reads
`changefeed/latest` every 0.1 s (one entry per stored instance, so the sequence numbers count the
instances stored in any window); a few seconds in, it adds `StationName` (series level) as an
extended query tag and polls the reindex operation until it succeeds. Prints the reindex's time
(to its last percentComplete below 100, and to `succeeded`, which also waits out a 3 s grace
for stores that raced the tag), the STOW rate before, during and after the reindex, and checks
that a search on the tag finds every series.

With --load-seconds 0 the reindex runs alone.

Usage: scripts/bench-reindex.py [--hds target/release/hds] [--bench target/release/hds-bench]
       [--instances 10000] [--batch 50] [--load-seconds 40] [--index sqlite]
"""

import argparse
import io
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import conftest  # noqa: E402


def multipart(datasets, boundary="bench-reindex"):
    body = io.BytesIO()
    for dataset in datasets:
        part = io.BytesIO()
        dataset.save_as(part, enforce_file_format=True)
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        body.write(part.getvalue())
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    return body.getvalue(), headers


def store(server, count, batch):
    """Stores `count` fresh instances; returns instances per second."""
    started = time.monotonic()
    done = 0
    while done < count:
        size = min(batch, count - done)
        body, headers = multipart([conftest.fresh_instance("CT_small.dcm") for _ in range(size)])
        response = server.http.post(f"{server.url}/studies", data=body, headers=headers)
        response.raise_for_status()
        done += size
    return count / (time.monotonic() - started)


def rate(samples, start, end):
    """Instances stored per second between two times, from (time, sequence) samples."""
    inside = [(t, sequence) for t, sequence in samples if start <= t <= end]
    if len(inside) < 2 or inside[-1][0] == inside[0][0]:
        return float("nan")
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hds", default="target/release/hds")
    parser.add_argument("--bench", default="target/release/hds-bench")
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--load-seconds", type=float, default=40)
    parser.add_argument("--index", default="sqlite")
    options = parser.parse_args()
    conftest.HDS_BIN = str(pathlib.Path(options.hds).resolve())
    with tempfile.TemporaryDirectory() as scratch:
        server = conftest.HdsServer(pathlib.Path(scratch) / "data", index=options.index)
        server.args[0] = conftest.HDS_BIN
        server.start()
        try:
            before = store(server, options.instances, options.batch)
            print(f"stored {options.instances} CT_small instances: {before:.0f}/s (one Python client)")

            def latest():
                response = server.http.get(f"{server.url}/changefeed/latest",
                                           params={"includemetadata": "false"})
                return response.json()["Sequence"] if response.status_code == 200 else 0

            load = None if options.load_seconds <= 0 else subprocess.Popen(
                [options.bench, "--base-url", server.url, "--phases", "stow", "--studies", "8000",
                 "--instances-per-study", "5", "--pixel-size", "64", "--stow-batch", "10",
                 "--concurrency", "8", "--seed", "12", "--duration", str(options.load_seconds)],
                env=dict(os.environ, HDS_BENCH_TOKEN=server.token()),
                stdout=subprocess.DEVNULL)
            clock = time.monotonic
            origin = clock()
            samples = []
            sampling = threading.Event()

            def sample():
                while not sampling.is_set():
                    samples.append((clock() - origin, latest()))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample)
            sampler.start()
            # Let the load reach its pace, then add the tag.
            while load and (not samples or samples[-1][1] - options.instances < 1000):
                if load.poll() is not None:
                    sys.exit(f"hds-bench ended ({load.returncode}) before its load was under way")
                time.sleep(0.1)
            time.sleep(3 if load else 1)
            added = clock() - origin
            response = server.http.post(f"{server.url}/extendedquerytags",
                                        json=[{"path": "StationName", "level": "Series"}])
            response.raise_for_status()
            reference = response.json()
            walked = None
            while True:
                operation = server.http.get(reference["href"]).json()
                now = clock() - origin
                # The percentage stays at 99 until the operation has ended.
                if walked is None and operation["percentComplete"] >= 99:
                    walked = now
                if operation["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.1)
            ended = clock() - origin
            if load:
                load.wait()
            sampling.set()
            sampler.join()
            last = samples[-1][0]
            print(f"reindex of {options.instances} instances {operation['status']}: percentComplete 99 "
                  f"at {walked - added:.1f} s, {operation['status']} at {ended - added:.1f} s")
            # The load's own start: after hds-bench generated its corpus.
            loading = next((t for t, sequence in samples if sequence > options.instances), added)
            if load:
                print(f"STOW (hds-bench, 64x64, batches of 10, concurrency 8), instances/s: before "
                      f"{rate(samples, loading + 1, added):.0f}, during the walk {rate(samples, added, walked):.0f}, "
                      f"after {rate(samples, ended + 1, last - 1):.0f}")
            found = server.http.get(f"{server.url}/series",
                                    params={"StationName": "CT01_OC0", "limit": "200"}).json()
            print(f"search on the tag: {len(found)} series on the first page (limit 200)")
            assert len(found) == min(200, options.instances)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
