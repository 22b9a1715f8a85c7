"""Azurite, Microsoft's Azure Storage emulator, for the blob store tests: started on a free
loopback port with its data in memory, and a small Blob REST client (Shared Key signed with the
emulator's well-known development key) to create containers and read what they hold.

Azurite is found at HDS_AZURITE_BLOB, else where scripts/object-stores installs it. When it is
missing the tests that need it are skipped, unless HDS_TEST_AZURITE=1 (set by scripts/test):
then its absence fails them."""

import base64
import email.utils
import hashlib
import hmac
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree

import pytest
import requests

from conftest import free_port

ACCOUNT = "devstoreaccount1"
# The emulator's public development key (documented by Microsoft; not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
API_VERSION = "2021-08-06"


def binary() -> pathlib.Path:
    configured = os.environ.get("HDS_AZURITE_BLOB")
    if configured:
        return pathlib.Path(configured)
    cache = pathlib.Path(os.environ.get("HDS_CI_CACHE", pathlib.Path.home() / ".cache" / "hds-ci"))
    return cache / "azurite" / "node_modules" / ".bin" / "azurite-blob"


class Azurite:
    def __init__(self, on_disk: bool = False):
        """`on_disk` keeps the blobs in files under a temporary directory (for benchmarks, so the
        emulator's memory does not grow with what is stored) instead of in memory."""
        self.on_disk = on_disk
        self.directory = tempfile.TemporaryDirectory(prefix="hds-azurite-")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self):
        self.log = open(pathlib.Path(self.directory.name) / "azurite.log", "wb")
        self.process = subprocess.Popen(
            [str(binary()), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             *(["--location", self.directory.name] if self.on_disk else ["--inMemoryPersistence"]),
             "--skipApiVersionCheck", "--disableTelemetry"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"azurite exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("azurite did not start listening within 120 s")

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.log.close()
        self.directory.cleanup()

    def environment(self) -> dict:
        """The variables `hds up --blob-store az://...` reads to reach this emulator."""
        return {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": self.endpoint}

    def request(self, method: str, path: str, query=None, body: bytes = b"", headers=None) -> requests.Response:
        """A Shared Key-signed request; `path` is under the account (`/container/blob`)."""
        query = dict(query or {})
        headers = dict(headers or {})
        headers["x-ms-date"] = email.utils.formatdate(usegmt=True)
        headers["x-ms-version"] = API_VERSION
        length = str(len(body)) if body else ""
        canonical_headers = "".join(
            f"{name}:{value}\n" for name, value in sorted((k.lower(), v) for k, v in headers.items())
            if name.startswith("x-ms-")
        )
        canonical_resource = f"/{ACCOUNT}/{ACCOUNT}{path}" + "".join(
            f"\n{name.lower()}:{value}" for name, value in sorted(query.items())
        )
        content_type = headers.get("Content-Type", "")
        string_to_sign = (
            f"{method}\n\n\n{length}\n\n{content_type}\n\n\n\n\n\n\n" + canonical_headers + canonical_resource
        )
        signature = hmac.new(base64.b64decode(ACCOUNT_KEY), string_to_sign.encode(), hashlib.sha256).digest()
        headers["Authorization"] = f"SharedKey {ACCOUNT}:{base64.b64encode(signature).decode()}"
        url = f"{self.endpoint}/{ACCOUNT}{urllib.parse.quote(path)}"
        return requests.request(method, url, params=query, data=body, headers=headers, timeout=60)

    def create_container(self, name: str):
        response = self.request("PUT", f"/{name}", {"restype": "container"})
        assert response.status_code == 201, response.text

    def list_blobs(self, container: str, prefix: str = "") -> list[str]:
        names, marker = [], ""
        while True:
            query = {"restype": "container", "comp": "list"}
            if prefix:
                query["prefix"] = prefix
            if marker:
                query["marker"] = marker
            response = self.request("GET", f"/{container}", query)
            assert response.status_code == 200, response.text
            root = ElementTree.fromstring(response.content)
            names.extend(element.text for element in root.iter("Name"))
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return names

    def get_blob(self, container: str, name: str) -> bytes:
        response = self.request("GET", f"/{container}/{name}")
        assert response.status_code == 200, response.text
        return response.content

    def put_blob(self, container: str, name: str, body: bytes):
        response = self.request("PUT", f"/{container}/{name}", body=body, headers={"x-ms-blob-type": "BlockBlob"})
        assert response.status_code == 201, response.text


def start_or_skip() -> Azurite:
    """A running Azurite, or a skip (a failure when HDS_TEST_AZURITE=1) when it is not installed."""
    if not binary().is_file():
        reason = f"Azurite is not installed at {binary()} (scripts/object-stores installs it)"
        if os.environ.get("HDS_TEST_AZURITE") == "1":
            pytest.fail(f"HDS_TEST_AZURITE=1 but {reason}")
        pytest.skip(reason)
    return Azurite().start()
