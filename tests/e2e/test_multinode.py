"""Three `hds up` nodes on one PostgreSQL database and one object store (Azurite), on
127.0.0.2, 127.0.0.3 and 127.0.0.4, behind HAProxy (Debian's package): they start together on
an empty database and bootstrap once; any node serves what another stored; a key disabled is
seen by every node within the probe interval; a node killed with SIGKILL under STOW load loses
nothing it acknowledged, and comes back serving everything.

The nodes share one data dir (the root key, the local CA and admin.json: on separate machines,
a copy of the first node's; docs/deploy.md) and one `--public-url`, the balancer's. Every wait
polls with a generous deadline."""

import concurrent.futures
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

import azurite
from conftest import (DEFAULT_SERVICE_PATH, FAST_CMK_FLAGS, ArmClient, HdsServer, PostgresCluster,
                      VaultClient, free_port, wait_for)
from test_dicomweb import stow, to_bytes, unique_copy

CONTAINER = "hds-multinode"
PREFIX = "blobs"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
ANY_SYNTAX = {"Accept": "application/dicom; transfer-syntax=*"}


def haproxy_or_skip() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if found:
        return found
    reason = "HAProxy is not installed (Debian package haproxy; .ci/run installs it)"
    if os.environ.get("HDS_TEST_HAPROXY") == "1":
        pytest.fail(f"HDS_TEST_HAPROXY=1 but {reason}")
    pytest.skip(reason)


def haproxy_config(port: int, vault_ports: tuple, nodes) -> str:
    """The configuration docs/deploy.md shows. DICOMweb, ARM and tokens: HTTP mode, round robin,
    /health checked every half second, a node out after two failed checks. Vaults: TCP (TLS
    passes through to the nodes, which serve the vaults' certificate), each port of the range to
    the same port on a node, a refused connection retried on the next node."""
    low, high = vault_ports
    servers = "\n".join(
        f"    server node{index} {node.host}:{node.port} check" for index, node in enumerate(nodes, start=1)
    )
    vault_servers = "\n".join(f"    server node{index} {node.host}" for index, node in enumerate(nodes, start=1))
    return f"""global
    maxconn 512

defaults
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    retries 3
    option redispatch 1

frontend dicomweb
    mode http
    bind 127.0.0.1:{port}
    default_backend hds

backend hds
    mode http
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}

frontend vaults
    mode tcp
    bind 127.0.0.1:{low}-{high}
    default_backend vaults

backend vaults
    mode tcp
    balance roundrobin
{vault_servers}
"""


def free_port_range(count: int, hosts) -> tuple:
    """`count` consecutive ports free on every one of `hosts`."""
    for _ in range(200):
        low = free_port() // count * count
        if low + count > 65535 or low < 1024:
            continue
        try:
            sockets = []
            for host in hosts:
                for port in range(low, low + count):
                    sock = socket.socket()
                    sockets.append(sock)
                    sock.bind((host, port))
            return (low, low + count - 1)
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free port range")


class Balancer:
    """HAProxy in front of the nodes, and the client side of it (what HdsServer offers for one
    node: `url`, `http`, `token`)."""

    def __init__(self, directory: pathlib.Path, binary: str, port: int, vault_ports: tuple, nodes):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + DEFAULT_SERVICE_PATH
        self.config = directory / "haproxy.cfg"
        self.config.write_text(haproxy_config(port, vault_ports, nodes))
        self.log = open(directory / "haproxy.log", "wb")
        self.process = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdout=self.log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.nodes = nodes
        self._session = None

    def wait_ready(self):
        def routes():
            if self.process.poll() is not None:
                raise AssertionError(f"haproxy exited with {self.process.returncode}")
            try:
                return requests.get(f"{self.base}/health", timeout=5).status_code == 200
            except requests.RequestException:
                return False
        wait_for(routes, timeout=60, what="HAProxy routing to a node")

    def token(self, resource="https://dicom.healthcareapis.azure.com") -> str:
        return self.nodes[0].token(resource)

    @property
    def http(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
            self._session.headers["Authorization"] = f"Bearer {self.token()}"
        return self._session

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def psql(cluster: PostgresCluster, database: str, sql: str) -> str:
    command = [str(cluster.bin / "psql"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
               "-d", database, "-tA", "-c", sql]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def loopback_aliases_work() -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((HOSTS[-1], 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    haproxy = haproxy_or_skip()
    assert loopback_aliases_work(), "Linux routes all of 127.0.0.0/8 to the loopback interface"
    emulator = azurite.start_or_skip()
    cluster = PostgresCluster().start()
    directory = tmp_path_factory.mktemp("multinode")
    nodes, balancer = [], None
    saved_environment = dict(os.environ)
    try:
        emulator.create_container(CONTAINER)
        os.environ.update(emulator.environment())
        database = "hds_multinode"
        index = cluster.create_database(database)
        balancer_port = free_port()
        vault_ports = free_port_range(8, ("127.0.0.1", *HOSTS))
        shared = directory / "data"
        extra = ["--public-url", f"http://127.0.0.1:{balancer_port}", "--blob-store", f"az://{CONTAINER}/{PREFIX}",
                 "--vault-address", "127.0.0.1", "--vault-ports", f"{vault_ports[0]}-{vault_ports[1]}",
                 *FAST_CMK_FLAGS]
        nodes = [HdsServer(shared, index=index, host=host, extra_args=extra) for host in HOSTS]
        # The balancer first: the node that runs the seed's flow reaches its new vault through it.
        balancer = Balancer(directory, haproxy, balancer_port, vault_ports, nodes)
        # All three at once on the empty database.
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            started = [pool.submit(node.start) for node in nodes]
            for future in started:
                future.result()
        balancer.wait_ready()
        yield {"nodes": nodes, "balancer": balancer, "cluster": cluster, "database": database,
               "emulator": emulator}
    finally:
        if balancer is not None:
            balancer.stop()
        for node in nodes:
            if node.process is not None:
                node.stop()
        os.environ.clear()
        os.environ.update(saved_environment)
        cluster.stop()
        emulator.stop()


def instance_url(base_url: str, dataset) -> str:
    return (f"{base_url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
            f"/instances/{dataset.SOPInstanceUID}")


def retrieve(client, base_url, dataset) -> requests.Response:
    return client.http.get(instance_url(base_url, dataset), headers=ANY_SYNTAX, timeout=60)


def test_nodes_starting_together_bootstrap_once(deployment):
    cluster, database = deployment["cluster"], deployment["database"]

    def count(sql):
        return int(psql(cluster, database, sql))

    assert count("SELECT COUNT(*) FROM identity_tenants") == 1
    assert count("SELECT COUNT(*) FROM identity_subscriptions") == 1
    assert count("SELECT COUNT(*) FROM identity_meta") == 3, psql(cluster, database, "SELECT name FROM identity_meta")
    assert count("SELECT COUNT(*) FROM identity_resource_groups") == 1
    assert count("SELECT COUNT(*) FROM identity_signing_keys") == 1
    admin = psql(cluster, database, "SELECT value FROM identity_meta WHERE name = 'admin_principal_id'")
    assert count(f"SELECT COUNT(*) FROM identity_role_assignments WHERE principal_id = '{admin}'") == 3
    # The seed's flow ran once: one vault, one key with one version, one DICOM service and its
    # one identity.
    assert count("SELECT COUNT(*) FROM keyvault_vaults") == 1
    assert count("SELECT COUNT(*) FROM keyvault_keys") == 1
    assert count("SELECT COUNT(*) FROM keyvault_key_versions") == 1
    assert count("SELECT COUNT(*) FROM dicom_services") == 1
    assert count("SELECT COUNT(*) FROM dicom_service_keys") == 1
    assert count("SELECT COUNT(*) FROM identity_principals") == 2
    for component in ("identity", "cmk"):
        versions = count(f"SELECT COUNT(*) FROM hds_schema_migrations WHERE component = '{component}'")
        distinct = count(f"SELECT COUNT(DISTINCT version) FROM hds_schema_migrations WHERE component = '{component}'")
        assert versions == distinct > 0
    # Every node serves, with the admin's one set of credentials.
    for node in deployment["nodes"]:
        assert node.http.get(f"{node.url}/studies", timeout=60).status_code in (200, 204)


def test_any_node_serves_what_another_stored(deployment):
    first, second, third = deployment["nodes"]
    balancer = deployment["balancer"]
    dataset = unique_copy("CT_small.dcm")
    payload = to_bytes(dataset)

    stored = stow(first, [payload])
    assert stored.status_code == 200, stored.text[:300]
    # Response URLs name the balancer (the public URL), whichever node answered.
    retrieve_url = stored.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert retrieve_url.startswith(balancer.base)

    # WADO and QIDO on the second node, and through the balancer (each node in turn).
    got = retrieve(second, second.url, dataset)
    assert got.status_code == 200 and got.content == payload
    found = second.http.get(f"{second.url}/studies", params={"StudyInstanceUID": dataset.StudyInstanceUID}, timeout=60)
    assert found.status_code == 200 and len(found.json()) == 1
    for _ in deployment["nodes"]:
        got = retrieve(balancer, balancer.url, dataset)
        assert got.status_code == 200 and got.content == payload
    # The blob is in the shared container, as ciphertext under a random name.
    assert len(deployment["emulator"].list_blobs(CONTAINER, prefix=f"{PREFIX}/")) >= 1

    # Deleted on the third node: gone from every node and from the balancer.
    deleted = third.http.delete(f"{third.url}/studies/{dataset.StudyInstanceUID}", timeout=60)
    assert deleted.status_code == 204, deleted.text[:300]
    for client, base in [(node, node.url) for node in deployment["nodes"]] + [(balancer, balancer.url)]:
        assert retrieve(client, base, dataset).status_code == 404


def test_a_move_under_way_neither_drops_nor_duplicates_the_service(deployment):
    """A move commits the service's resource under its new id before the service's internal id
    follows it. Every node refreshes its services from the database every 5 s; a refresh in
    between must not serve the new resource id as a new service (claiming it an id, which
    would fail the move and open an empty service) nor stop serving the one under way. The
    in-between state is set up in the database and held over two refreshes."""
    nodes, cluster, database = deployment["nodes"], deployment["cluster"], deployment["database"]
    dataset = unique_copy("CT_small.dcm")
    payload = to_bytes(dataset)
    assert stow(nodes[0], [payload]).status_code == 200

    service_id = ArmClient(nodes[0]).service_id()
    group = service_id.split("/")[4]
    moving = f"{group}-moving"
    assert f"/resourceGroups/{group}/" in service_id, service_id

    def move_service_row(source, target):
        """The service's resource row alone moved from group `source` to `target`, as the first
        step of a move leaves it (the service's internal id untouched)."""
        source_id = service_id.replace(f"/resourceGroups/{group}/", f"/resourceGroups/{source}/")
        target_id = service_id.replace(f"/resourceGroups/{group}/", f"/resourceGroups/{target}/")
        psql(cluster, database,
             f"UPDATE arm_resources SET id_key = '{target_id.lower()}', id = '{target_id}', "
             f"group_key = replace(group_key, '/resourcegroups/{source.lower()}', '/resourcegroups/{target.lower()}'), "
             f"parent_key = replace(parent_key, '/resourcegroups/{source.lower()}/', '/resourcegroups/{target.lower()}/') "
             f"WHERE id_key = '{source_id.lower()}'")

    def service_ids():
        return psql(cluster, database, "SELECT service_id, resource_key FROM dicom_services ORDER BY 1")

    def every_node_serves_the_instance():
        for node in nodes:
            got = retrieve(node, node.url, dataset)
            assert got.status_code == 200 and got.content == payload, (node.host, got.status_code)

    ids_before = service_ids()
    move_service_row(group, moving)
    try:
        # Two refreshes of every node.
        time.sleep(12)
        assert service_ids() == ids_before
        every_node_serves_the_instance()
    finally:
        move_service_row(moving, group)
    time.sleep(6)
    every_node_serves_the_instance()
    assert service_ids() == ids_before

def data_plane(client, base_url):
    try:
        response = client.http.get(f"{base_url}/studies", timeout=30)
    except requests.RequestException as error:
        return (None, type(error).__name__)
    code = None
    if response.status_code >= 400 and response.headers.get("Content-Type", "").startswith("application/json"):
        code = response.json().get("error", {}).get("code")
    return (response.status_code, code)


def test_a_disabled_key_stops_every_node_within_the_probe_interval(deployment):
    nodes, balancer = deployment["nodes"], deployment["balancer"]
    arm = ArmClient(nodes[0])
    service = arm.get(arm.service_id())
    key_url = service["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]
    # The vault is addressed at the balancer, whichever node created it.
    assert key_url.startswith(f"https://127.0.0.1:"), key_url
    vault = VaultClient(nodes[0], key_url.split("/keys/")[0])
    dataset = unique_copy("MR_small.dcm")
    assert stow(nodes[1], [to_bytes(dataset)]).status_code == 200

    vault.set_enabled(key_url, False)
    try:
        # The probe runs every second on each node: 60 s is a generous bound for all three.
        for node in nodes:
            wait_for(lambda: data_plane(node, node.url) == (500, "CustomerManagedKeyAccessLost"), timeout=60,
                     what=f"{node.host} to answer CustomerManagedKeyAccessLost")
        assert data_plane(balancer, balancer.url) == (500, "CustomerManagedKeyAccessLost")
        # Resource health says the same whichever node answers.
        for node in nodes:
            health = ArmClient(node).health(arm.service_id())
            assert health["availabilityState"] == "Unavailable", health
    finally:
        vault.set_enabled(key_url, True)
    for node in nodes:
        wait_for(lambda: data_plane(node, node.url)[0] in (200, 204), timeout=60,
                 what=f"{node.host} to serve data again")
        got = retrieve(node, node.url, dataset)
        assert got.status_code == 200


def test_the_key_vault_sdk_reaches_a_vault_through_the_balancer(deployment):
    from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

    from conftest import StaticTokenCredential, key_client

    nodes = deployment["nodes"]
    arm = ArmClient(nodes[0])
    service = arm.get(arm.service_id())
    key_url = service["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"]
    vault_uri = key_url.split("/keys/")[0] + "/"
    # The vault's URI names the balancer: each call may land on any node.
    client = key_client(nodes[1], vault_uri)
    created = client.create_rsa_key("through-balancer", size=3072)
    assert created.id.startswith(f"{vault_uri}keys/through-balancer/")
    versions = set()
    for _ in range(6):
        versions |= {version.id for version in client.list_properties_of_key_versions("through-balancer")}
    assert versions == {created.id}
    rotated = client.rotate_key("through-balancer")
    assert client.get_key("through-balancer").id == rotated.id
    crypto = CryptographyClient(rotated, StaticTokenCredential(nodes[2].token("https://vault.azure.net")),
                                verify_challenge_resource=False, connection_verify=nodes[2].ca_path)
    for _ in range(4):
        wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"m" * 32)
        assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == b"m" * 32
    client.begin_delete_key("through-balancer").wait()
    assert [key.name for key in client.list_deleted_keys()] == ["through-balancer"]


def test_a_node_killed_under_stow_load_loses_nothing_acknowledged(deployment):
    nodes, balancer = deployment["nodes"], deployment["balancer"]
    # The first node: it may well be the one that ran the seed's flow; nothing depends on it.
    victim = nodes[0]
    survivors = nodes[1:]

    acknowledged, errors = [], []
    lock = threading.Lock()
    stop = threading.Event()
    token = balancer.token()

    def writer(seed: int):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        client = type("Client", (), {"http": session, "url": balancer.url})()
        sent = 0
        while not stop.is_set() and sent < 200:
            dataset = unique_copy("CT_small.dcm")
            payload = to_bytes(dataset)
            sent += 1
            try:
                response = stow(client, [payload])
            except requests.RequestException:
                continue
            if response.status_code == 200:
                stored = [item["00081155"]["Value"][0] for item in response.json()["00081199"]["Value"]]
                with lock:
                    if stored == [dataset.SOPInstanceUID]:
                        acknowledged.append((dataset, payload))
                    else:
                        errors.append(f"acknowledged {stored} for {dataset.SOPInstanceUID}")

    writers = [threading.Thread(target=writer, args=(seed,), daemon=True) for seed in range(4)]
    for thread in writers:
        thread.start()
    wait_for(lambda: len(acknowledged) >= 12, timeout=180, what="a dozen acknowledged STOWs")
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    killed_at = len(acknowledged)
    # The load goes on through the balancer on the two others.
    wait_for(lambda: len(acknowledged) >= killed_at + 12, timeout=180, what="STOWs acknowledged after the kill")
    stop.set()
    for thread in writers:
        thread.join(timeout=300)
        assert not thread.is_alive()
    victim.log.close()
    victim.process = None

    with lock:
        done = list(acknowledged)
        assert errors == []
    for node in survivors:
        for dataset, payload in done:
            got = retrieve(node, node.url, dataset)
            assert got.status_code == 200 and got.content == payload, dataset.SOPInstanceUID

    # Restarted on its address, it serves everything, including what was stored while it was down.
    victim.start()
    wait_for(lambda: data_plane(victim, victim.url)[0] in (200, 204), timeout=60, what="the restarted node")
    for dataset, payload in done:
        got = retrieve(victim, victim.url, dataset)
        assert got.status_code == 200 and got.content == payload, dataset.SOPInstanceUID


def test_events_stored_through_every_node_arrive_once_in_order(deployment):
    """A webhook event subscription on the shared database: every node runs a dispatcher, one
    holds the subscription's lease; instances stored through each node in turn arrive once
    each, in sequence order."""
    from test_events import EG_API, Receiver, put_topic, subscribe, topic_id

    nodes = deployment["nodes"]
    arm = ArmClient(nodes[0])
    receiver = Receiver()
    try:
        put_topic(arm)
        assert subscribe(arm, receiver.url)["properties"]["provisioningState"] == "Succeeded"
        datasets = [unique_copy("CT_small.dcm") for _ in range(6)]
        for position, dataset in enumerate(datasets):
            stored = stow(nodes[position % len(nodes)], [to_bytes(dataset)])
            assert stored.status_code == 200, stored.text[:300]
        events = wait_for(lambda: receiver.events() if len(receiver.events()) >= 6 else None,
                          timeout=60, what="six events")
        time.sleep(3)
        events = receiver.events()
        assert [e["data"]["imageSopInstanceUid"] for e in events] == [d.SOPInstanceUID for d in datasets]
        sequences = [e["data"]["sequenceNumber"] for e in events]
        assert sequences == sorted(set(sequences))
    finally:
        arm.ok("DELETE", topic_id(arm), api_version=EG_API)
        receiver.close()
