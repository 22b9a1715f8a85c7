"""Attacks on the DICOMweb data plane of a real `hds up`: each hostile request must be refused
with a clear 4xx, the process must stay up with bounded memory (VmRSS from /proc), and the data
stored before the attacks must still be served byte for byte.

Two servers: one with the default limits (the data-plane rules), and one with short timeouts and
small caps so the listener's limits can be shown within seconds."""

import io
import os
import select
import socket
import threading
import time

import numpy
import pydicom
import pytest
import requests
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from conftest import HdsServer, dicom_file, free_port, read, wait_for
from test_metrics import scrape, total

MIB = 1024 * 1024


# ---- helpers ------------------------------------------------------------------------------------


def rss_bytes(server) -> int:
    for line in open(f"/proc/{server.process.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(server) -> float:
    fields = open(f"/proc/{server.process.pid}/stat").read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_files(server) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def alive(server):
    assert server.process.poll() is None, "hds exited"
    assert requests.get(f"{server.base}/health", timeout=10).status_code == 200


def to_bytes(dataset, implicit=False) -> bytes:
    if implicit:
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def fresh(name="CT_small.dcm", study=None) -> pydicom.Dataset:
    dataset = read(dicom_file(name))
    dataset.StudyInstanceUID = study or generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def big_frame_instance(side=1024) -> pydicom.Dataset:
    """One frame of side x side 16-bit pixels (2 MiB by default)."""
    dataset = fresh()
    dataset.Rows = side
    dataset.Columns = side
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.SamplesPerPixel = 1
    dataset.PixelRepresentation = 0
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.PixelData = (numpy.arange(side * side, dtype=numpy.uint32) % 65521).astype(numpy.uint16).tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


def multipart(parts, boundary="adversarial"):
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(server, parts, headers=None):
    body, content_type = multipart(parts)
    return server.http.post(
        f"{server.url}/studies", data=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json", **(headers or {})},
    )


def failure_reasons(response):
    return [item["00081197"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


def parts_of(response) -> list:
    content_type = response.headers["Content-Type"]
    boundary = [p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")][0]
    pieces = response.content.split(b"--" + boundary.encode())
    assert pieces[-1].strip() == b"--"
    parts = []
    for piece in pieces[1:-1]:
        _, _, content = piece.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


def raw_exchange(server, head: bytes, body_chunks=(), timeout=60.0):
    """Sends `head` then the chunks on a raw socket, stopping as soon as the server answers (or
    closes); returns the status code of the answer. Lets a test send a body the server refuses
    part way without the client failing on the closed connection."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    try:
        sock.sendall(head)
        for chunk in body_chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(timeout)
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]
        return int(answer.split(b" ", 2)[1])
    finally:
        sock.close()


def auth_head(server, method, path, content_type, extra=b"") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token()}\r\n"
        f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n".encode() + extra + b"\r\n"
    )


def chunked(pieces):
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


# ---- the server with default limits, and the victim's data ---------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = HdsServer(tmp_path_factory.mktemp("adversarial") / "data").start()
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def victim(server):
    """A stored multi-frame instance and a study of many instances, with their bytes."""
    multi = fresh("emri_small.dcm")
    big = big_frame_instance()
    study = generate_uid()
    members = [fresh(study=study) for _ in range(120)]
    files = {"multi": to_bytes(multi), "big": to_bytes(big)}
    assert stow(server, [files["multi"], files["big"]]).status_code == 200
    member_bytes = [to_bytes(member) for member in members]
    assert stow(server, member_bytes).status_code == 200
    return {
        "multi": multi, "big": big, "study": study, "files": files, "member_bytes": sorted(member_bytes),
    }


def instance_url(server, dataset):
    return f"{server.url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}/instances/{dataset.SOPInstanceUID}"


def assert_victim_intact(server, victim):
    for key in ("multi", "big"):
        got = server.http.get(instance_url(server, victim[key]), headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert got.status_code == 200 and got.content == victim["files"][key], key
    study = server.http.get(
        f"{server.url}/studies/{victim['study']}", headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    )
    assert study.status_code == 200
    assert sorted(parts_of(study)) == victim["member_bytes"]


# ---- WADO: frame lists ------------------------------------------------------------------------


def test_repeated_or_too_many_frames_are_refused_and_frames_stream(server, victim):
    big = victim["big"]
    frames = f"{instance_url(server, big)}/frames"
    accept = {"Accept": 'multipart/related; type="application/octet-stream"'}
    rss_before = rss_bytes(server)
    # The 3 KB URL that once built a 3 GiB response.
    repeated = server.http.get(f"{frames}/" + ",".join(["1"] * 1500), headers=accept)
    assert repeated.status_code == 400 and repeated.json()["error"]["code"] == "BadRequest"
    too_many = server.http.get(f"{frames}/" + ",".join(str(n) for n in range(1, 5000)), headers=accept)
    assert too_many.status_code == 400
    assert server.http.get(f"{frames}/0", headers=accept).status_code == 400
    assert server.http.get(f"{frames}/2", headers=accept).status_code == 404
    one = server.http.get(f"{frames}/1", headers=accept)
    assert one.status_code == 200 and parts_of(one) == [big.PixelData]
    # Every frame of a multi-frame instance, in the order asked, each once.
    multi = victim["multi"]
    count = int(multi.NumberOfFrames)
    frame_size = len(multi.PixelData) // count
    order = list(range(count, 0, -1))
    got = server.http.get(f"{instance_url(server, multi)}/frames/" + ",".join(map(str, order)), headers=accept)
    assert got.status_code == 200
    assert parts_of(got) == [multi.PixelData[(n - 1) * frame_size:n * frame_size] for n in order]
    alive(server)
    assert rss_bytes(server) - rss_before < 64 * MIB


# ---- STOW: search values and token building -----------------------------------------------------


@pytest.mark.parametrize("name", ["a" * 200_000, "\ufdfa" * 20_000, "x=y=z=w"])
def test_over_long_names_are_refused_in_linear_time(server, victim, name):
    dataset = fresh()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.PatientName = name
    cpu_before = cpu_seconds(server)
    response = stow(server, [to_bytes(dataset, implicit=True)])
    assert response.status_code == 409
    assert failure_reasons(response) == [43264]
    # The quadratic path took 12.7 s (200,000 letters) and 68 s (20,000 U+FDFA) of CPU.
    assert cpu_seconds(server) - cpu_before < 5
    alive(server)


def test_a_name_within_the_tolerance_is_stored_and_found(server, victim):
    dataset = fresh()
    dataset.PatientName = "Tolerated" + "q" * 150 + "^Name"
    response = stow(server, [to_bytes(dataset)])
    assert response.status_code == 200
    found = server.http.get(f"{server.url}/studies", params={"PatientName": "tolerated", "fuzzymatching": "true"})
    assert found.status_code == 200
    assert [hit["0020000D"]["Value"][0] for hit in found.json()] == [dataset.StudyInstanceUID]


# ---- STOW: multipart structure ------------------------------------------------------------------


def test_a_part_header_that_never_ends_is_refused(server, victim):
    rss_before = rss_bytes(server)
    head = auth_head(server, "POST", "/dicom/default/dicom/v2/studies", 'multipart/related; type="application/dicom"; boundary=b')
    endless = chunked([b"--b\r\nX-Endless: "] + [b"a" * 65536] * 1600)  # 100 MiB offered
    assert raw_exchange(server, head, endless) == 400
    assert rss_bytes(server) - rss_before < 64 * MIB
    alive(server)


def test_too_many_parts_are_refused_cheaply(server, victim):
    cpu_before = cpu_seconds(server)
    head = auth_head(server, "POST", "/dicom/default/dicom/v2/studies", 'multipart/related; type="application/dicom"; boundary=b')
    # 200,000 delimiters of parts without header fields: 100,000 parts as the multipart parser
    # reads them (each one's header runs to the blank line after the next delimiter).
    empty_parts = chunked([b"--b\r\n\r\n\r\n" * 1000] * 200 + [b"--b--\r\n"])
    assert raw_exchange(server, head, empty_parts) == 400
    # They once cost 28 s of CPU.
    assert cpu_seconds(server) - cpu_before < 10
    alive(server)


def test_an_over_long_boundary_is_refused(server, victim):
    body, _ = multipart([to_bytes(fresh())], boundary="b" * 71)
    response = server.http.post(
        f"{server.url}/studies", data=body,
        # The server answers before reading the body and closes the connection: do not pool it.
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={"b" * 71}', "Connection": "close"},
    )
    assert response.status_code == 400
    assert "boundary" in response.json()["error"]["message"]


# ---- WADO: a study of many instances ------------------------------------------------------------


def test_concurrent_study_retrieves_hold_few_open_files(server, victim):
    url = f"{server.url}/studies/{victim['study']}"
    headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    files_before = open_files(server)
    rss_before = rss_bytes(server)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {server.token()}"
    responses = [session.get(url, headers=headers, stream=True) for _ in range(8)]
    try:
        for response in responses:
            assert response.status_code == 200
            next(response.iter_content(4096))
        # Eight retrieves in progress hold about one blob each, not one per instance.
        assert open_files(server) - files_before < 8 * 3 + 8
        assert rss_bytes(server) - rss_before < 128 * MIB
        for response in responses:
            response.content  # noqa: B018 - read to the end
    finally:
        for response in responses:
            response.close()
    assert_victim_intact(server, victim)


# ---- QIDO ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"}, {"limit": "201"}, {"limit": "-5"}, {"offset": "-1"}, {"offset": "100001"},
        {"offset": "x"}, {"PatientName": "*", "fuzzymatching": "true"},
        {"PatientName": "**^?", "fuzzymatching": "true"}, {"PatientName": "a" * 5000},
        {"PatientID": "p" * 300}, {"StudyDate": "2" * 100},
    ],
)
def test_bad_search_parameters_are_refused(server, victim, params):
    response = server.http.get(f"{server.url}/studies", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "BadRequest"


def test_search_limit_defaults_and_bounds(server, victim):
    assert server.http.get(f"{server.url}/studies", params={"limit": "200", "offset": "100000"}).status_code == 200
    # The study of 120 instances: the default page of instances is 100.
    found = server.http.get(f"{server.url}/studies/{victim['study']}/instances")
    assert found.status_code == 200 and len(found.json()) == 100


# ---- leaks: which services exist, and the Host header -------------------------------------------


def test_anonymous_callers_cannot_tell_services_apart(server, victim):
    known = requests.get(f"{server.url}/studies")
    unknown = requests.get(f"{server.base}/dicom/nosuch/service/v2/studies")
    bad_version = requests.get(f"{server.base}/dicom/default/dicom/v9/studies")
    for response in (known, unknown, bad_version):
        assert response.status_code == 401
        assert response.json() == known.json()
    # An authenticated caller may learn that a service does not exist.
    assert server.http.get(f"{server.base}/dicom/nosuch/service/v2/studies").status_code == 404


def test_response_urls_ignore_the_host_header(server, victim):
    response = stow(server, [to_bytes(fresh())], headers={"Host": "evil.example"})
    assert response.status_code == 200
    body = response.text
    assert "evil.example" not in body
    url = response.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert url.startswith(f"{server.base}/dicom/default/dicom/v2/studies/")
    found = server.http.get(f"{server.url}/studies", headers={"Host": "evil.example"})
    assert found.status_code == 200 and "evil.example" not in found.text


def test_victim_data_survives_the_attacks(server, victim):
    assert_victim_intact(server, victim)
    alive(server)


# ---- the listener's limits (a server with short timeouts and small caps) ------------------------


LIMITS = (
    "--header-read-timeout", "2s", "--idle-timeout", "12s", "--body-idle-timeout", "8s",
    "--max-connections", "24", "--max-in-flight-requests", "4",
)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    metrics_address = f"127.0.0.1:{free_port()}"
    server = HdsServer(tmp_path_factory.mktemp("limits") / "data",
                       extra_args=(*LIMITS, "--metrics-listen", metrics_address)).start()
    server.metrics_url = f"http://{metrics_address}/metrics"
    yield server
    assert server.stop() == 0


def closed_by_server(sock) -> bool:
    """Whether the server closed `sock` (EOF or reset), without blocking."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, OSError):
        return True


def test_trickled_headers_are_cut_off(limited):
    sockets = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", limited.port))
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        sockets.append(sock)

    def trickle_until_all_closed():
        for sock in sockets:
            try:
                sock.sendall(b"X")
            except OSError:
                pass
        return all(closed_by_server(sock) for sock in sockets)

    try:
        wait_for(trickle_until_all_closed, timeout=30, interval=0.5, what="trickling connections to be closed")
    finally:
        for sock in sockets:
            sock.close()
    alive(limited)


def test_idle_connections_are_closed(limited):
    sock = socket.create_connection(("127.0.0.1", limited.port))
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        wait_for(lambda: closed_by_server(sock), timeout=40, what="the idle connection to be closed")
    finally:
        sock.close()


def test_a_client_that_stops_reading_is_cut_off(limited):
    # 32 MiB: far more than the kernel buffers of a loopback connection hold.
    dataset = big_frame_instance(side=4096)
    stored = stow(limited, [to_bytes(dataset)])
    assert stored.status_code == 200
    expected = len(to_bytes(dataset))
    sock = socket.socket()
    # A small receive window, so the server's writes stall at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", limited.port))
    try:
        sock.sendall(
            f"GET {instance_url(limited, dataset).removeprefix(limited.base)} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {limited.token()}\r\nAccept: application/dicom; transfer-syntax=*\r\n\r\n".encode()
        )
        # Not a synchronisation: the test is that nothing moving for longer than the idle
        # timeout (12 s) ends the response.
        time.sleep(16)
        sock.settimeout(30)
        received = 0
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
        assert received < expected, "the stalled response was completed"
    finally:
        sock.close()
    alive(limited)


def serves_health(server) -> bool:
    """Whether a new connection gets `/health` answered. Until the server has seen closed
    connections go, a new one may still be past the connection cap and closed: "not yet"."""
    try:
        return requests.get(f"{server.base}/health", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def test_connections_past_the_cap_are_closed_and_the_cap_frees(limited):
    held = []
    refused = False
    try:
        # Connections of earlier tests may still hold places for a moment: open until one is
        # refused, which must happen by the cap.
        for _ in range(24 + 1):
            sock = socket.create_connection(("127.0.0.1", limited.port))
            sock.settimeout(20)
            try:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""
            if not answer:
                sock.close()
                refused = True
                break
            assert answer.startswith(b"HTTP/1.1 200")
            held.append(sock)
        assert refused, "no connection was refused past the cap"
        assert len(held) <= 24
    finally:
        for sock in held:
            sock.close()
    # Once the held connections are gone, new ones are served again.
    wait_for(lambda: serves_health(limited), timeout=30, what="a new connection to be served")


def test_a_stalled_request_body_is_answered_408(limited):
    head = (
        f"POST /dicom/default/dicom/v2/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {limited.token()}\r\n"
        "Content-Type: application/dicom\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    started = time.time()
    assert raw_exchange(limited, head + b"\0" * 100, timeout=30) == 408
    assert time.time() - started >= 7.5


def requests_in_flight(server) -> int:
    """What `hds_http_requests_in_flight` reads now (on the metrics listener, outside the caps)."""
    return int(total(scrape(server)[1], "hds_http_requests_in_flight"))


def test_requests_past_the_in_flight_cap_are_answered_503(limited):
    # Four stores whose bodies come a byte at a time hold the four places for as long as the
    # bytes keep coming (each within the body idle timeout).
    head = (
        f"POST /dicom/default/dicom/v2/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {limited.token()}\r\n"
        "Content-Type: application/dicom\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    # A response of an earlier test still finishing would hold a place a stalled store needs.
    wait_for(lambda: requests_in_flight(limited) == 0, timeout=30, what="no request in flight")
    stalled = []
    try:
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", limited.port))
            sock.sendall(head + b"\0" * 10)
            stalled.append(sock)

        last_byte = [time.monotonic()]

        def all_four_in_flight():
            # A byte every 2 s: well within the 8 s body idle timeout, and far from the 128 bytes
            # of preamble after which the zeros would no longer be a DICOM file.
            if time.monotonic() - last_byte[0] > 2:
                for sock in stalled:
                    sock.sendall(b"\0")
                last_byte[0] = time.monotonic()
            # A store the server answered or closed would never count: say so at once.
            assert not any(closed_by_server(sock) or select.select([sock], [], [], 0)[0] for sock in stalled), \
                "the server answered or closed a stalled store"
            return requests_in_flight(limited) == 4

        wait_for(all_four_in_flight, timeout=30, interval=0.1, what="the four stalled stores to be in flight")
        busy = requests.get(f"{limited.base}/health", timeout=5)
        assert busy.status_code == 503, busy.text
        assert busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["code"] == "ServerBusy"
        # The refused request took no place.
        assert requests_in_flight(limited) == 4
    finally:
        for sock in stalled:
            sock.close()
    wait_for(lambda: serves_health(limited), timeout=30, what="the places to free")
    wait_for(lambda: requests_in_flight(limited) == 0, timeout=30, what="the in-flight gauge to fall to 0")
    alive(limited)
