"""Fixtures that run a real `hds up` (and, where asked, a throwaway PostgreSQL cluster)."""

import base64
import os
import json
import pathlib
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
import zlib

import pydicom
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HDS_BIN = os.environ.get("HDS_BIN", str(pathlib.Path(__file__).resolve().parents[2] / "target" / "debug" / "hds"))
DEFAULT_SERVICE_PATH = "/dicom/default/dicom/v2"

# hds's namespace for external principals' ids (crates/hds-identity/src/tokens.rs).
EXTERNAL_PRINCIPAL_NAMESPACE = uuid.UUID("6f1c2a9e-8d4b-4e07-9a35-c1f07b2de864")


def external_principal_id(issuer: str, tenant: str, subject: str) -> str:
    """The principal id hds gives an external issuer's subject (docs/security.md)."""
    name = "".join(f"{len(part.encode())}:{part}" for part in (issuer, tenant, subject))
    return str(uuid.uuid5(EXTERNAL_PRINCIPAL_NAMESPACE, name))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ExternalIssuer:
    """An OpenID issuer that hds trusts by configuration (`--trust-issuer ISSUER=FILE`): an RSA key
    of its own, published as a JWKS file in `directory`, signing RS256 tokens."""

    def __init__(self, directory, issuer: str, kid: str = "org-1"):
        self.issuer = issuer
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self.key.public_key().public_numbers()

        def number(value: int) -> str:
            return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

        self.jwks = pathlib.Path(directory) / f"{kid}-jwks.json"
        self.jwks.write_text(json.dumps({"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                                                   "n": number(public.n), "e": number(public.e)}]}))

    def flag(self):
        return ["--trust-issuer", f"{self.issuer}={self.jwks}"]

    def token(self, claims: dict, key=None) -> str:
        """`claims` signed under this issuer's key id, by its key or by `key` (a forgery)."""
        header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": self.kid}).encode())
        payload = b64url(json.dumps(claims).encode())
        signature = (key or self.key).sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{payload}.{b64url(signature)}"

    def user_claims(self, audience: str, subject: str) -> dict:
        """The claims of a valid ten-minute token for `subject`."""
        now = int(time.time())
        return {"iss": self.issuer, "aud": audience, "oid": subject, "sub": subject,
                "iat": now, "nbf": now - 5, "exp": now + 600}

    def principal_id(self, subject: str, tenant: str = "") -> str:
        return external_principal_id(self.issuer, tenant, subject)


def ephemeral_port_floor() -> int:
    """The lowest port the kernel gives an outgoing connection as its source port."""
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_ports_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` for a server started next. Chosen below the ephemeral range: a port
    the kernel picked there (bind to port 0) may become, before the server binds it, the source
    port of some process's outgoing connection (to PostgreSQL, say), and the bind then fails. Never
    the same port twice in one test run, since a server may not have bound its port yet."""
    floor = ephemeral_port_floor()
    low = max(1024, floor - 20000)
    for _ in range(1000):
        port = random.randrange(low, floor)
        if port in _ports_handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _ports_handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{floor - 1} on {host}")


class HdsServer:
    """A running `hds up` with its own data dir and log file, listening on `host` (any loopback
    address works on Linux). `ca_path` is what clients trust; by default the local CA's ca.pem."""

    def __init__(self, data_dir: pathlib.Path, http: bool = True, index: str = "sqlite", extra_args=(),
                 host: str = "127.0.0.1", ca_path=None, env=None):
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.host = host
        self.port = free_port(host)
        self.scheme = "http" if http else "https"
        self._ca_path = ca_path
        self.base = f"{self.scheme}://{host}:{self.port}"
        self.url = self.base + DEFAULT_SERVICE_PATH
        self.log_path = data_dir.parent / f"hds-{self.port}.log"
        self.index = index
        self.args = [HDS_BIN, "up", "--data-dir", str(data_dir), "--listen", f"{host}:{self.port}", "--index", index]
        if http:
            self.args.append("--http")
        self.args.extend(extra_args)
        self.process = None
        self._session = None

    @property
    def ca_path(self) -> str:
        return str(self._ca_path or self.data_dir / "tls" / "ca.pem")

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
        env = {**os.environ, "HDS_LOG": "debug", **self.env}
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

    def __init__(self, durable: bool = False):
        """`durable` keeps PostgreSQL's fsync (for benchmarks); tests run without it."""
        self.durable = durable
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
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
            + ("" if self.durable else " -c fsync=off"), "start",
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
def any_index(request) -> str:
    """Each index backend in turn, as `hds up --index` takes it: `sqlite`, then a fresh database
    of the session's throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        return "sqlite"
    cluster = request.getfixturevalue("postgres")
    _database_counter[0] += 1
    return cluster.create_database(f"hds_e2e_{_database_counter[0]}")


@pytest.fixture
def hds_any_index(any_index, tmp_path):
    """hds on each index backend."""
    server = HdsServer(tmp_path / "data", index=any_index).start()
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


# ---- customer-managed key scenarios: control plane, vault data plane, polling -----------------

import io  # noqa: E402
import re  # noqa: E402

from pydicom.uid import generate_uid  # noqa: E402

CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
HEALTHCARE_API_VERSION = "2023-06-01-preview"
# A probe every second, and a latch long enough that every "lost, then back within the latch"
# step finishes inside it however slow the machine: such tests must not race the latch.
FAST_CMK_FLAGS = ("--cmk-probe-interval", "1s", "--cmk-lost-access-latch", "10m")
# A latch short enough to pass while a test waits: only for tests whose point is the latch. Each
# such test waits for the latched state itself, so a slow machine only makes it wait longer.
LATCHING_CMK_FLAGS = ("--cmk-probe-interval", "1s", "--cmk-lost-access-latch", "3s")


def wait_for(condition, timeout=30.0, interval=0.2, what="the condition"):
    """Polls `condition` until it returns something truthy; returns that value. Fails the test
    with `what` and the last value seen when `timeout` seconds pass first."""
    deadline = time.time() + timeout
    last = None
    while True:
        last = condition()
        if last:
            return last
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


class ArmClient:
    """The control plane as the bootstrap admin: ARM paths under the admin's subscription."""

    def __init__(self, server: "HdsServer"):
        self.server = server
        admin = server.admin()
        self.subscription_id = admin["subscriptionId"]
        self.tenant_id = admin["tenantId"]
        self.subscription = f"/subscriptions/{self.subscription_id}"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {server.token('https://management.azure.com')}"

    def group(self, name="default") -> str:
        return f"{self.subscription}/resourceGroups/{name}"

    def vault_id(self, name="default", group="default") -> str:
        return f"{self.group(group)}/providers/Microsoft.KeyVault/vaults/{name}"

    def workspace_id(self, name="default", group="default") -> str:
        return f"{self.group(group)}/providers/Microsoft.HealthcareApis/workspaces/{name}"

    def service_id(self, workspace="default", service="dicom", group="default") -> str:
        return f"{self.workspace_id(workspace, group)}/dicomservices/{service}"

    def identity_id(self, name, group="default") -> str:
        return f"{self.group(group)}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"

    def request(self, method, path, body=None, api_version=HEALTHCARE_API_VERSION) -> requests.Response:
        separator = "&" if "?" in path else "?"
        return self.session.request(method, f"{self.server.base}{path}{separator}api-version={api_version}", json=body)

    def ok(self, method, path, body=None, api_version=HEALTHCARE_API_VERSION) -> dict:
        """The request, which must succeed; its JSON body (or {})."""
        response = self.request(method, path, body, api_version)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else {}

    def get(self, path, api_version=HEALTHCARE_API_VERSION) -> dict:
        return self.ok("GET", path, api_version=api_version)

    def put_group(self, name):
        return self.ok("PUT", self.group(name), {"location": "local"}, api_version="2022-09-01")

    def put_vault(self, name, group="default", **properties) -> dict:
        body = {
            "location": "local",
            "properties": {
                "tenantId": self.tenant_id,
                "sku": {"family": "A", "name": "standard"},
                "enableSoftDelete": True,
                "enablePurgeProtection": True,
                "enableRbacAuthorization": True,
                "accessPolicies": [],
                **properties,
            },
        }
        return self.ok("PUT", self.vault_id(name, group), body, api_version="2022-07-01")

    def put_key(self, vault, name, group="default", kty="RSA", size=2048, ops=("wrapKey", "unwrapKey"), enabled=True):
        body = {"properties": {"kty": kty, "keySize": size, "keyOps": list(ops), "attributes": {"enabled": enabled}}}
        return self.ok("PUT", f"{self.vault_id(vault, group)}/keys/{name}", body, api_version="2022-07-01")

    def put_identity(self, name, group="default") -> dict:
        return self.ok("PUT", self.identity_id(name, group), {"location": "local"}, api_version="2023-01-31")

    def grant(self, principal_id, scope, role=CRYPTO_SERVICE_ENCRYPTION_USER) -> str:
        """Assigns `role` to `principal_id` at `scope`; returns the assignment's id."""
        import uuid

        assignment = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}"
        body = {
            "properties": {
                "roleDefinitionId": f"{self.subscription}/providers/Microsoft.Authorization/roleDefinitions/{role}",
                "principalId": principal_id,
                "principalType": "ServicePrincipal",
            }
        }
        self.ok("PUT", assignment, body, api_version="2022-04-01")
        return assignment

    def assignments_of(self, principal_id, scope) -> list:
        listed = self.get(f"{scope}/providers/Microsoft.Authorization/roleAssignments", api_version="2022-04-01")
        return [a for a in listed["value"] if a["properties"]["principalId"] == principal_id]

    def service_body(self, key_url, identity=None) -> dict:
        return {
            "location": "local",
            "identity": identity or {"type": "SystemAssigned"},
            "properties": {"encryption": {"customerManagedKeyEncryption": {"keyEncryptionKeyUrl": key_url}}},
        }

    def put_service(self, service_id, key_url, identity=None) -> requests.Response:
        return self.request("PUT", service_id, self.service_body(key_url, identity))

    def update_service(self, service_id) -> dict:
        """The seed's "update the DICOM service": the same PUT again, from what GET shows."""
        current = self.get(service_id)
        identity = {key: value for key, value in current["identity"].items() if key in ("type", "userAssignedIdentities")}
        if "userAssignedIdentities" in identity:
            identity["userAssignedIdentities"] = {key: {} for key in identity["userAssignedIdentities"]}
        key_url = current["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]
        return self.ok("PUT", service_id, self.service_body(key_url, identity))

    def health(self, resource_id) -> dict:
        path = f"{resource_id}/providers/Microsoft.ResourceHealth/availabilityStatuses/current"
        return self.get(path, api_version="2023-10-01-preview")["properties"]


class VaultClient:
    """A vault's data plane (Azure Key Vault keys API 7.4) as the bootstrap admin."""

    def __init__(self, server: "HdsServer", vault_uri: str):
        self.uri = vault_uri.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {server.token('https://vault.azure.net')}"
        self.ca_path = server.ca_path

    def request(self, method, path, body=None) -> requests.Response:
        # verify= per request: a session's verify loses to REQUESTS_CA_BUNDLE in the environment.
        return self.session.request(method, f"{self.uri}{path}?api-version=7.4", json=body, verify=self.ca_path)

    def key(self, name) -> dict:
        response = self.request("GET", f"/keys/{name}")
        assert response.status_code == 200, response.text
        return response.json()

    def set_enabled(self, key_id: str, enabled: bool) -> dict:
        """PATCH of one key version's attributes; `key_id` is its versioned URL."""
        path = key_id[len(self.uri):]
        response = self.request("PATCH", path, {"attributes": {"enabled": enabled}})
        assert response.status_code == 200, response.text
        assert response.json()["attributes"]["enabled"] is enabled
        return response.json()

    def rotate(self, name) -> dict:
        response = self.request("POST", f"/keys/{name}/rotate")
        assert response.status_code == 200, response.text
        return response.json()


def data_plane_status(server: "HdsServer", service_url: str = None):
    """(status, error code or None) of a search on a DICOM service's data plane."""
    response = server.http.get(f"{service_url or server.url}/studies")
    code = None
    if response.status_code >= 400 and response.headers.get("Content-Type", "").startswith("application/json"):
        code = response.json().get("error", {}).get("code")
    return response.status_code, code


@pytest.fixture
def cmk_hds(any_index, tmp_path):
    """hds after the seed's flow, with a key-access monitor that probes every second and a latch
    (10 minutes) that no test step outlasts: lost access comes back by itself. On each index
    backend: the key lifecycle holds on SQLite and on PostgreSQL alike."""
    server = HdsServer(tmp_path / "data", index=any_index, extra_args=FAST_CMK_FLAGS).start()
    yield server
    assert server.stop() == 0, "hds did not stop cleanly on SIGTERM"


@pytest.fixture
def latching_hds(any_index, tmp_path):
    """hds after the seed's flow, with a 3-second latch: lost access latches while a test waits.
    On each index backend (the latch is kept in the database, across restarts)."""
    server = HdsServer(tmp_path / "data", index=any_index, extra_args=LATCHING_CMK_FLAGS).start()
    yield server
    assert server.stop() == 0, "hds did not stop cleanly on SIGTERM"


class StaticTokenCredential:
    """An azure-core token credential that hands out one token from hds's token service."""

    def __init__(self, token: str):
        self._token = token

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, int(time.time()) + 3000)


def key_client(server: "HdsServer", vault_uri: str):
    """azure-keyvault-keys' KeyClient against one of hds's vaults, as the bootstrap admin."""
    from azure.keyvault.keys import KeyClient

    return KeyClient(
        vault_uri,
        StaticTokenCredential(server.token("https://vault.azure.net")),
        verify_challenge_resource=False,
        connection_verify=server.ca_path,
    )


GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# ---- DICOMweb, key and health helpers for the customer-managed key scenarios ----------------------------------------------------------------------------------


def fresh_instance(name="CT_small.dcm") -> pydicom.Dataset:
    dataset = read(dicom_file(name))
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def store(server, dataset, service_url=None) -> None:
    """STOW-RS of one instance; it must be stored."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    boundary = "hds-e2e-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = server.http.post(
        f"{service_url or server.url}/studies",
        data=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text
    assert "00081199" in response.json(), response.text


def retrieve(server, dataset, service_url=None) -> requests.Response:
    """WADO-RS of one instance as application/dicom."""
    return server.http.get(
        f"{service_url or server.url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
        f"/instances/{dataset.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )


def assert_readable(server, dataset, service_url=None) -> None:
    """The instance comes back with the same pixel data."""
    response = retrieve(server, dataset, service_url)
    assert response.status_code == 200, response.text
    content_type = response.headers["Content-Type"]
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    parts = [part for part in response.content.split(b"--" + boundary) if b"\r\n\r\n" in part]
    payload = parts[0].split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n")
    returned = pydicom.dcmread(io.BytesIO(payload))
    assert returned.SOPInstanceUID == dataset.SOPInstanceUID
    assert returned.PixelData == dataset.PixelData


PACK_HEADER_LEN = 64
PACK_RECORD_ALIGN = 4096


def pack_records(segment: pathlib.Path) -> dict:
    """The records of a pack segment (crates/hds-blob/src/pack.rs), by offset, each with the
    Unix time its header says it was written. Holes (deleted records) are skipped."""
    records = {}
    with open(segment, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        position = 0
        while position < size:
            try:
                position = os.lseek(file.fileno(), position, os.SEEK_DATA)
            except OSError:
                break  # only holes from here on
            position -= position % PACK_RECORD_ALIGN
            file.seek(position)
            header = file.read(PACK_HEADER_LEN)
            valid = (len(header) == PACK_HEADER_LEN and header[:8] == b"HDSPACK1"
                     and zlib.crc32(header[:36]) == struct.unpack(">I", header[36:40])[0])
            if not valid:
                position += PACK_RECORD_ALIGN
                continue
            length, written = struct.unpack(">IQ", header[24:36])
            records[position] = written
            position += -(-(PACK_HEADER_LEN + length) // PACK_RECORD_ALIGN) * PACK_RECORD_ALIGN
    return records


def pack_record(identity: str, payload: bytes, written: float) -> bytes:
    """A record as a pack segment holds it, for a test to write: the header `pack_records`
    reads (magic, identity, length, Unix time written, CRC-32 of those), then the blob."""
    header = b"HDSPACK1" + bytes.fromhex(identity) + struct.pack(">IQ", len(payload), int(written))
    header += struct.pack(">I", zlib.crc32(header))
    return header + bytes(PACK_HEADER_LEN - len(header)) + payload


def blob_files(data_dir: pathlib.Path) -> dict:
    """Every blob under the data dir's blob store, with when it was written in nanoseconds: a
    file of its own (its mtime), or a record in a pack segment (`SEGMENT@OFFSET`, the time its
    header holds)."""
    blobs = {}
    for path in (data_dir / "blobs").rglob("*"):
        if not path.is_file():
            continue
        if path.parent.name == "packs" and path.suffix == ".pack":
            for offset, written in pack_records(path).items():
                blobs[f"{path}@{offset}"] = written * 1_000_000_000
        else:
            blobs[str(path)] = path.stat().st_mtime_ns
    return blobs


def key_url_of(service: dict) -> str:
    return service["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]


def vault_of(server, arm) -> "VaultClient":
    vault = arm.get(arm.vault_id(), api_version="2022-07-01")
    return VaultClient(server, vault["properties"]["vaultUri"])


def wait_health(arm, service_id, state, timeout=20.0, **expected) -> dict:
    """Polls resource health until availabilityState is `state` (and each expected property has
    its value); returns the properties."""

    def matches():
        health = arm.health(service_id)
        if health["availabilityState"] != state:
            return None
        if any(health.get(key) != value for key, value in expected.items()):
            return None
        return health

    return wait_for(matches, timeout=timeout, what=f"resource health {state} {expected}")


def wait_data_plane(server, expected, service_url=None, timeout=20.0):
    """Polls a data-plane search until it answers `expected`, a (status, error code) pair."""
    seen = []

    def answered():
        seen.append(data_plane_status(server, service_url))
        return seen[-1] == expected

    try:
        return wait_for(answered, timeout=timeout, what=f"the data plane to answer {expected}")
    except AssertionError as error:
        raise AssertionError(f"{error}; the data plane answered {seen[-1]}") from None


def wait_probes(arm, service_id, count=3):
    """Waits until the monitor reported `count` more probes: resource health's reportedTime is
    the last probe's time, so each probe shows as a new value that stays put between probes."""
    seen = {}
    first = arm.health(service_id)["reportedTime"]

    def probed():
        reported = arm.health(service_id)["reportedTime"]
        seen[reported] = seen.get(reported, 0) + 1
        return sum(1 for value, times in seen.items() if value != first and times >= 2) >= count

    wait_for(probed, timeout=count * 5.0, what=f"{count} more key-access probes")
