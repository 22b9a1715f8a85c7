#!/usr/bin/env python3
"""Reindex of an extended query tag: how long it takes for N stored instances, and STOW-RS
throughput while it runs.

Starts a fresh `hds up` (plain HTTP, SQLite unless --index names a PostgreSQL URL), stores N
copies (fresh UIDs) of pydicom-data's CT_small.dcm in multipart requests of --batch, adds
`StationName` (series level) as an extended query tag, and polls its operation until it
succeeds; meanwhile a second client stores --during more instances and reports their rate.
Prints the store rate before, the reindex time, the store rate during it, and checks that a
search on the tag finds every series.

Usage: scripts/bench-reindex.py [--hds target/debug/hds] [--instances 10000] [--batch 50]
       [--during 1000] [--index sqlite]
"""

import argparse
import io
import pathlib
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hds", default="target/debug/hds")
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--during", type=int, default=1000)
    parser.add_argument("--index", default="sqlite")
    options = parser.parse_args()
    conftest.HDS_BIN = str(pathlib.Path(options.hds).resolve())
    with tempfile.TemporaryDirectory() as scratch:
        server = conftest.HdsServer(pathlib.Path(scratch) / "data", index=options.index)
        server.args[0] = conftest.HDS_BIN
        server.start()
        try:
            before = store(server, options.instances, options.batch)
            print(f"stored {options.instances} instances: {before:.0f}/s")
            response = server.http.post(f"{server.url}/extendedquerytags",
                                        json=[{"path": "StationName", "level": "Series"}])
            response.raise_for_status()
            reference = response.json()
            started = time.monotonic()
            during = {}
            writer = threading.Thread(target=lambda: during.update(rate=store(server, options.during, options.batch)))
            writer.start()
            percents = []
            while True:
                operation = server.http.get(reference["href"]).json()
                percents.append(operation["percentComplete"])
                if operation["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            writer.join()
            print(f"reindex {operation['status']} in {elapsed:.1f} s "
                  f"({options.instances / elapsed:.0f} instances/s, includes the 3 s completion grace); "
                  f"percentComplete seen: {sorted(set(percents))[:5]}...{sorted(set(percents))[-3:]}")
            print(f"stored {options.during} instances during the reindex: {during['rate']:.0f}/s "
                  f"(before: {before:.0f}/s)")
            found = server.http.get(f"{server.url}/series",
                                    params={"StationName": "CT01_OC0", "limit": "200"}).json()
            print(f"search on the tag: {len(found)} series on the first page (limit 200)")
            assert len(found) == min(200, options.instances + options.during)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
