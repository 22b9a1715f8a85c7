"""Fixtures that run a real `hds up` (and, where asked, a throwaway PostgreSQL cluster)."""

import os
import json
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pydicom
import pytest
import requests

HDS_BIN = os.environ.get("HDS_BIN", str(pathlib.Path(__file__).resolve().parents[2] / "target" / "debug" / "hds"))
DEFAULT_SERVICE_PATH = "/dicom/default/dicom/v2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HdsServer:
    """A running `hds up` with its own data dir and log file."""

    def __init__(self, data_dir: pathlib.Path, http: bool = True, index: str = "sqlite", extra_args=()):
        self.data_dir = data_dir
        self.port = free_port()
        self.scheme = "http" if http else "https"
        self.base = f"{self.scheme}://127.0.0.1:{self.port}"
        self.url = self.base + DEFAULT_SERVICE_PATH
        self.log_path = data_dir.parent / f"hds-{self.port}.log"
        self.index = index
        self.args = [HDS_BIN, "up", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{self.port}", "--index", index]
        if http:
            self.args.append("--http")
        self.args.extend(extra_args)
        self.process = None
        self._session = None

    @property
    def ca_path(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    def admin(self) -> dict:
        return json.loads((self.data_dir / "admin.json").read_text())

    def token(self, resource="https://dicom.healthcareapis.azure.com", client_id=None, client_secret=None) -> str:
        """A token from hds's token service, by default the bootstrap admin's."""
        admin = self.admin()
        response = requests.post(
            f"{self.base}/{admin['tenantId']}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id or admin["clientId"],
                "client_secret": client_secret or admin["clientSecret"],
                "scope": f"{resource}/.default",
            },
            verify=self.ca_path,
        )
        response.raise_for_status()
        return response.json()["access_token"]

    @property
    def http(self) -> requests.Session:
        """A session that sends the admin's DICOM token (pass verify= per request for HTTPS)."""
        if self._session is None:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token()}"
            self._session = session
        return self._session

    def start(self):
        self._session = None
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, HDS_LOG="debug")
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.log, env=env)
        deadline = time.time() + 60
        banner = []
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            banner.append(line.decode())
            if b"hds is ready" in line:
                # The banner's URL lines follow; leave the pipe drained in the background.
                self._drain()
                return self
        raise RuntimeError(f"hds did not start: {''.join(banner)} / {self.log_path.read_text(errors='replace')}")

    def _drain(self):
        import threading

        def drain(stream):
            for _ in iter(stream.readline, b""):
                pass

        threading.Thread(target=drain, args=(self.process.stdout,), daemon=True).start()

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=30)
        finally:
            self.log.close()
            self.process = None
        return code

    def kill(self):
        self.process.kill()
        self.process.wait()
        self.log.close()
        self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


class PostgresCluster:
    """A throwaway PostgreSQL cluster on a free loopback port, run as the postgres user."""

    def __init__(self):
        bins = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"))
        if not bins:
            raise RuntimeError("PostgreSQL server binaries not found (Debian package: postgresql)")
        self.bin = bins[-1]
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="hds-pg-"))
        os.chmod(self.dir, 0o777)
        self.port = free_port()

    def _run(self, *args):
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self):
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        self._run(
            "pg_ctl", "-D", str(data), "-w", "-l", str(self.dir / "log"),
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )
        return self

    def url(self, database="postgres"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name):
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def stop(self):
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def hds(tmp_path):
    server = HdsServer(tmp_path / "data").start()
    yield server
    assert server.stop() == 0, "hds did not stop cleanly on SIGTERM"


_database_counter = [0]


@pytest.fixture(params=["sqlite", "postgres"])
def hds_any_index(request, tmp_path):
    """hds on each index backend."""
    if request.param == "sqlite":
        index = "sqlite"
    else:
        cluster = request.getfixturevalue("postgres")
        _database_counter[0] += 1
        index = cluster.create_database(f"hds_e2e_{_database_counter[0]}")
    server = HdsServer(tmp_path / "data", index=index).start()
    yield server
    assert server.stop() == 0


def dicom_file(name: str) -> pathlib.Path:
    """A file of pydicom's test data (shipped with pydicom, or fetched from pydicom-data's
    package, which carries the larger ones)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(name)
    return pathlib.Path(path)


def read(path) -> pydicom.Dataset:
    return pydicom.dcmread(str(path))
