#!/usr/bin/env python3
"""The scale-out figures of docs/benchmarks.md ("Scale-out: one node, PostgreSQL and Azurite, two
nodes"): the DICOMweb load of hds-bench against

- `orthanc-pg`: Orthanc with its DICOMweb plugin and its PostgreSQL index plugin (files on disk,
  `SyncStorageArea` at its default, true);
- `hds-sqlite`: one hds node on SQLite and the data dir (today's `hds up`);
- `hds-pg-azurite`: one hds node on PostgreSQL and Azure Blob Storage (Azurite, on disk);
- `hds-2-nodes`: two hds nodes on that PostgreSQL and Azurite, on 127.0.0.2 and 127.0.0.3,
  behind HAProxy (the configuration docs/deploy.md shows, as tests/e2e/test_multinode.py runs);

interleaved run after run in rotating order, each run on a fresh database, container and data
dir, with the page cache written back and emptied first (as scripts/bench-compare.sh does). One
PostgreSQL cluster serves every run, with fsync on (the e2e tests turn it off): every server
gets the same guarantee from it. Plain HTTP everywhere, as Orthanc is measured.

Azurite is an emulator: it keeps blobs in files without syncing them, so (b) and (c) measure
the cost of the object-store path (an HTTP PUT per blob, ranged GETs per read), not Azure Blob
Storage's durability or latency.

Usage:
    cargo build --release -p hds -p hds-bench && scripts/object-stores
    scripts/bench-scaleout.py [--runs 3] [--out DIR] [--servers a,b,...] -- HDS-BENCH-ARGUMENTS...
e.g. `-- --studies 20 --instances-per-study 25 --requests 1500 --seed 42`.

Environment: HDS_BIN (default target/release/hds), HDS_BENCH (default target/release/hds-bench).
Results: NAME-run-R.json in --out, medians and ratios to the first server at the end
(scripts/bench-medians.sh). Needs root (initdb as the postgres user, drop_caches).
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
os.environ.setdefault("HDS_BIN", str(ROOT / "target" / "release" / "hds"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import requests  # noqa: E402

import azurite  # noqa: E402
from conftest import DEFAULT_SERVICE_PATH, HdsServer, PostgresCluster, free_port  # noqa: E402
from test_multinode import Balancer, free_port_range  # noqa: E402

HDS_BENCH = os.environ.get("HDS_BENCH", str(ROOT / "target" / "release" / "hds-bench"))
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGINS = pathlib.Path("/usr/share/orthanc/plugins")
SERVERS = ("orthanc-pg", "hds-sqlite", "hds-pg-azurite", "hds-2-nodes")
QUIET = {"HDS_LOG": "warn"}


def wait_until(condition, what: str, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def answers(url: str, token: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return requests.get(url, headers=headers, timeout=5).status_code == 200
    except requests.RequestException:
        return False


class Run:
    """One server for one run: `start()` returns (base URL, token or None); `stop()` ends it."""

    def __init__(self, name: str, directory: pathlib.Path, cluster: PostgresCluster,
                 emulator: azurite.Azurite, number: int):
        self.name, self.directory, self.cluster, self.emulator = name, directory, cluster, emulator
        self.database = f"{name.replace('-', '_')}_{number}"
        self.container = f"{name}-{number}"
        self.processes = []
        self.nodes = []
        self.balancer = None

    def start(self):
        if self.name == "orthanc-pg":
            return self.start_orthanc(), None
        if self.name == "hds-sqlite":
            node = HdsServer(self.directory / "data", env=QUIET)
            self.nodes = [node.start()]
            return node.url, node.token()
        index = self.cluster.create_database(self.database)
        self.emulator.create_container(self.container)
        os.environ.update(self.emulator.environment())
        blob_store = ["--blob-store", f"az://{self.container}/hds"]
        if self.name == "hds-pg-azurite":
            node = HdsServer(self.directory / "data", index=index, extra_args=blob_store, env=QUIET)
            self.nodes = [node.start()]
            return node.url, node.token()
        hosts = ("127.0.0.2", "127.0.0.3")
        port = free_port()
        vault_ports = free_port_range(4, ("127.0.0.1", *hosts))
        extra = [*blob_store, "--public-url", f"http://127.0.0.1:{port}", "--vault-address", "127.0.0.1",
                 "--vault-ports", f"{vault_ports[0]}-{vault_ports[1]}"]
        self.nodes = [HdsServer(self.directory / "data", index=index, host=host, extra_args=extra, env=QUIET)
                      for host in hosts]
        self.balancer = Balancer(self.directory, shutil.which("haproxy") or "/usr/sbin/haproxy", port,
                                 vault_ports, self.nodes)
        # The first node runs the first start's flow; the second joins what it made.
        self.nodes[0].start()
        self.nodes[1].start()
        self.balancer.wait_ready()
        token = self.nodes[0].token()
        wait_until(lambda: answers(f"{self.balancer.url}/studies?limit=1", token), "the balancer")
        return self.balancer.url, token

    def start_orthanc(self) -> str:
        database = self.cluster.create_database(self.database).rsplit("/", 1)[1]
        storage = self.directory / "storage"
        storage.mkdir(parents=True)
        port = free_port()
        config = self.directory / "orthanc.json"
        config.write_text(f"""{{
  "Name": "hds-bench-baseline",
  "StorageDirectory": "{storage}",
  "IndexDirectory": "{storage}",
  "HttpPort": {port},
  "DicomServerEnabled": false,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "SaveJobs": false,
  "Plugins": ["{PLUGINS / 'libOrthancDicomWeb.so'}", "{PLUGINS / 'libOrthancPostgreSQLIndex.so'}"],
  "DicomWeb": {{ "Enable": true, "Root": "/dicom-web/", "EnableWado": false }},
  "PostgreSQL": {{
    "EnableIndex": true, "EnableStorage": false, "Host": "127.0.0.1", "Port": {self.cluster.port},
    "Database": "{database}", "Username": "postgres", "Password": "", "EnableSsl": false, "Lock": false
  }}
}}
""")
        log = open(self.directory / "orthanc.log", "wb")
        self.processes.append(subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}/dicom-web"
        wait_until(lambda: answers(f"{url}/studies?limit=1"), "Orthanc")
        return url

    def stop(self):
        for process in self.processes:
            process.terminate()
            process.wait(timeout=60)
        if self.balancer is not None:
            self.balancer.stop()
        for node in self.nodes:
            node.stop()


def empty_page_cache():
    subprocess.run(["sync"], check=True)
    pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated, first is the baseline")
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="hds-bench arguments after --")
    arguments = parser.parse_args()
    bench = arguments.bench[1:] if arguments.bench[:1] == ["--"] else arguments.bench
    servers = arguments.servers.split(",")
    unknown = [name for name in servers if name not in SERVERS]
    if unknown:
        parser.error(f"unknown servers {unknown}; known: {', '.join(SERVERS)}")
    out = arguments.out or pathlib.Path(tempfile.mkdtemp(prefix="bench-scaleout."))
    out.mkdir(parents=True, exist_ok=True)
    print(f"results in {out}", file=sys.stderr)

    cluster = PostgresCluster(durable=True).start()
    emulator = azurite.Azurite(on_disk=True).start()
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-scaleout-work."))
    saved_environment = dict(os.environ)
    status = 0
    try:
        for run_number in range(1, arguments.runs + 1):
            for offset in range(len(servers)):
                name = servers[(run_number - 1 + offset) % len(servers)]
                load = open("/proc/loadavg").read().split()[:3]
                print(f"=== run {run_number}/{arguments.runs}: {name}, load {' '.join(load)}", file=sys.stderr)
                empty_page_cache()
                directory = work / f"{name}-{run_number}"
                directory.mkdir()
                run = Run(name, directory, cluster, emulator, run_number)
                try:
                    base_url, token = run.start()
                    environment = dict(os.environ, **({"HDS_BENCH_TOKEN": token} if token else {}))
                    with open(out / f"{name}-run-{run_number}.json", "wb") as result:
                        finished = subprocess.run([HDS_BENCH, "--base-url", base_url, "--json", *bench],
                                                  stdout=result, env=environment)
                    status |= finished.returncode != 0
                finally:
                    run.stop()
                    os.environ.clear()
                    os.environ.update(saved_environment)
                    shutil.rmtree(directory, ignore_errors=True)
    finally:
        emulator.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    files = [str(out / f"{name}-run-{run}.json") for name in servers for run in range(1, arguments.runs + 1)
             if (out / f"{name}-run-{run}.json").stat().st_size > 0]
    medians = subprocess.run([str(ROOT / "scripts" / "bench-medians.sh"), *files], capture_output=True, text=True)
    (out / "medians.txt").write_text(medians.stdout)
    print(medians.stdout, end="")
    return status


if __name__ == "__main__":
    sys.exit(main())
