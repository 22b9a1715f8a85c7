"""Durability beyond a killed process, on a real `hds up`:

1. acknowledged means on stable storage: a system-call trace (strace) of a STOW shows, before
   the index commit that names the blob, the blob's data synced after its last write and its
   directory synced after its creation; before the 200 leaves on the socket, the index's
   write-ahead log synced after its last write. Checked for a small instance, whose blob is a
   record in a pack segment, and one of 2 MiB, whose blob is written in pieces as a file of its
   own.
   The same check run on `--durability relaxed` finds the syncs missing, so it can fail;
2. the orphan sweeper removes blobs nothing references (and crash leftovers) and keeps every
   referenced one;
3. `hds backup` while STOWs go on, `hds restore` into a new data dir: every instance
   acknowledged before the backup comes back byte-identical, and without access to the
   customer's key the restored service answers 500 CustomerManagedKeyAccessLost."""

import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import threading
import time

import requests

from conftest import (
    FAST_CMK_FLAGS,
    HDS_BIN,
    ArmClient,
    HdsServer,
    key_url_of,
    pack_record,
    retrieve,
    store,
    vault_of,
    wait_data_plane,
    wait_for,
)
from test_dicomweb import unique_copy

# A real MR of 2 MiB: more than a sealed blob written whole, so its blob is written in pieces,
# a file of its own (crates/hds-blob/src/pack.rs, PACKED_BLOB_LIMIT).
LARGE_INSTANCE = "MR2_UNCR.dcm"

# strace is a test dependency (`.ci/run` installs it): without it the trace tests fail, they
# do not skip.
TRACED_CALLS = "fsync,fdatasync,rename,renameat,renameat2,openat,write,writev,pwrite64,pwritev,pwritev2,sendto,sendmsg"


class TracedHdsServer(HdsServer):
    """`hds up` under `strace -f`, every traced call with its file descriptors' paths."""

    def __init__(self, data_dir, trace_path, extra_args=()):
        super().__init__(data_dir, extra_args=extra_args)
        self.trace_path = trace_path
        self.args = ["strace", "-f", "-qq", "-yy", "-s", "48", "-e", f"trace={TRACED_CALLS}", "-o", str(trace_path),
                     *self.args]

    def stop(self, sig=signal.SIGTERM):
        # strace does not pass a SIGTERM on: stop hds itself (strace's child, by its id), and
        # strace ends with it, with its exit status.
        if self.process is None:
            return 0
        children = pathlib.Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), sig)
        try:
            code = self.process.wait(timeout=30)
        finally:
            self.log.close()
            self.process = None
        return code


def parse_trace(path):
    """Completed calls in completion order: (line, start line, name, text of the call, thread)."""
    calls = []
    pending = {}
    start_pattern = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
    resumed_pattern = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")
    with open(path, errors="replace") as trace:
        for number, line in enumerate(trace):
            line = line.rstrip("\n")
            resumed = resumed_pattern.match(line)
            if resumed:
                pid, name, rest = resumed.groups()
                start_number, start_text = pending.pop((pid, name), (number, ""))
                calls.append((number, start_number, name, start_text + rest, pid))
                continue
            started = start_pattern.match(line)
            if not started:
                continue
            pid, name, rest = started.groups()
            if rest.endswith("<unfinished ...>"):
                pending[(pid, name)] = (number, rest[: -len("<unfinished ...>")])
            else:
                calls.append((number, number, name, rest, pid))
    return calls


def durability_violations(calls, blob_name, data_dir):
    """What is missing between the STOW of `blob_name` and its 200, or [] if nothing.

    A small blob is a record in a pack segment, at the place its name gives
    (`IDENTITY@SEGMENT.OFFSET.LENGTH`); a larger one is a file under its name. Either way, the
    blob's data must be synced after its last write and its directory (the pack directory, or
    the file's shard) after the file's creation, both before the index commit that names it
    (a write-ahead-log write before the 200), and the log synced after that write, by the
    committing thread, before the 200.
    """
    blobs = str((data_dir / "blobs").resolve())
    if "@" in blob_name:
        segment, offset, _length = (int(part) for part in blob_name.split("@")[1].split("."))
        directory = f"{blobs}/packs"
        final = f"{directory}/{segment:010}.pack"
        # The record's one vectored write (header and blob) at its offset.
        # (A call strace saw interrupted by another thread's ends "..., OFFSET )  = N".)
        at_offset = re.compile(rf", {offset}\s*\)\s*=\s*\d+$")

        def is_blob_write(call):
            return (call[2] in ("pwritev", "pwritev2", "pwrite64") and f"<{final}>" in call[3]
                    and at_offset.search(call[3]) is not None)
    else:
        directory = f"{blobs}/{blob_name[:2]}"
        final = f"{directory}/{blob_name}"

        def is_blob_write(call):
            return call[2] in ("write", "writev", "pwrite64") and f"<{final}>" in call[3]
    wal = str((data_dir / "index.db-wal").resolve())
    problems = []

    def first(predicate, after=-1):
        for call in calls:
            if call[1] > after and predicate(call):
                return call
        return None

    created = first(lambda call: call[2] == "openat" and f'"{final}"' in call[3] and "O_CREAT" in call[3])
    if created is None:
        return [f"no creation of {final}"]
    written = first(is_blob_write, after=created[0])
    if written is None:
        return [f"no write of the blob into {final}"]
    response = first(lambda call: call[2] in ("write", "writev", "sendto", "sendmsg")
                     and "TCP" in call[3] and "HTTP/1.1 200" in call[3], after=written[0])
    if response is None:
        return ["no 200 response after the blob's write"]
    sent = response[1]
    blob_writes = [call for call in calls if is_blob_write(call) and call[1] < sent]
    wal_writes = [call for call in calls if call[2] == "pwrite64" and f"<{wal}>" in call[3]
                  and blob_writes[-1][0] < call[1] < sent]
    if not wal_writes:
        return ["no index commit (write-ahead log write) between the blob's last write and the 200"]
    # Other connections write the same log meanwhile (the audit queue's batches, the key-access
    # monitor's state), each from its own thread, and may commit just after the store and sync
    # after its 200. So the store's commit is the last log write of a thread that synced the log
    # after it, before the 200, the latest such write if several threads did: only the
    # committing connection's own sync counts (a checkpoint on another connection that happens
    # to sync the log is not the commit's).
    last_by_thread = {}
    for call in wal_writes:
        last_by_thread[call[4]] = call
    synced_commits = [write for thread, write in last_by_thread.items()
                      if first(lambda call: call[2] in ("fsync", "fdatasync") and f"<{wal}>" in call[3]
                               and call[0] < sent and call[4] == thread, after=write[0]) is not None]
    if not synced_commits:
        problems.append("the index's write-ahead log was not synced after its last write, before the 200")
    commit = max(synced_commits, default=wal_writes[-1])[1]
    if first(lambda call: call[2] in ("fsync", "fdatasync") and f"<{final}>" in call[3] and call[0] < commit,
             after=blob_writes[-1][0]) is None:
        problems.append("the blob's data was not synced after its last write, before the index commit")
    if first(lambda call: call[2] in ("fsync", "fdatasync") and f"<{directory}>" in call[3] and call[0] < commit,
             after=created[0]) is None:
        problems.append("the blob's directory was not synced after the blob's creation, before the index commit")
    return problems


def traced_stow(tmp_path, durability):
    """The problems found for each blob of two STOWs, one at a time: a small instance (a record
    in a pack) and one of 2 MiB (a file of its own), by kind."""
    data_dir = tmp_path / f"data-{durability}"
    trace_path = tmp_path / f"trace-{durability}.txt"
    server = TracedHdsServer(data_dir, trace_path, extra_args=("--durability", durability)).start()
    try:
        for name in ("CT_small.dcm", LARGE_INSTANCE):
            store(server, unique_copy(name))
    finally:
        assert server.stop() == 0
    database = sqlite3.connect(data_dir / "index.db")
    try:
        names = [row[0] for row in database.execute("SELECT blob_name FROM dicom_instances")]
    finally:
        database.close()
    kinds = {("packed" if "@" in name else "file"): name for name in names}
    assert len(names) == 2 and set(kinds) == {"packed", "file"}, names
    calls = parse_trace(trace_path)
    return {kind: durability_violations(calls, name, data_dir) for kind, name in kinds.items()}


def test_a_stow_is_acknowledged_only_after_its_blob_directory_and_index_are_synced(tmp_path):
    assert traced_stow(tmp_path, "full") == {"packed": [], "file": []}


def test_the_trace_check_finds_the_syncs_missing_when_durability_is_relaxed(tmp_path):
    for kind, problems in traced_stow(tmp_path, "relaxed").items():
        assert "the blob's data was not synced after its last write, before the index commit" in problems, kind
        assert "the blob's directory was not synced after the blob's creation, before the index commit" in problems, kind
        assert "the index's write-ahead log was not synced after its last write, before the 200" in problems, kind


# ---- the orphan sweeper -------------------------------------------------------------------------


def test_the_sweeper_removes_orphans_and_keeps_every_referenced_blob(tmp_path):
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir).start()
    stored = []
    # Two small instances (records in a pack) and one of 2 MiB (a file of its own).
    for name in ("CT_small.dcm", "CT_small.dcm", LARGE_INSTANCE):
        dataset = unique_copy(name)
        store(server, dataset)
        stored.append(dataset)
    assert server.stop() == 0
    blobs = data_dir / "blobs"
    referenced = {path for path in blobs.rglob("*") if path.is_file() and path.parent.name != "packs"}
    assert len(referenced) == 1
    segments = sorted((blobs / "packs").glob("*.pack"))
    assert len(segments) == 1

    # What a crash leaves: a whole blob never recorded, as a file and as a record in a pack,
    # and a half-written temporary.
    old = time.time() - 7200
    orphan = blobs / "ab" / ("ab" + "0" * 30)
    orphan.write_bytes(os.urandom(4096))
    orphan_segment = blobs / "packs" / "0000000099.pack"
    orphan_segment.write_bytes(pack_record("12" * 16, os.urandom(5000), old))
    leftover = blobs / "cd" / ("cd" + "1" * 30 + ".tmp-00000000000000aa")
    leftover.write_bytes(os.urandom(100))
    stranger = blobs / "ef" / "notes.txt"
    stranger.write_bytes(b"not a blob")
    # Old enough for the grace period, as are the stored blobs (a record carries its own time:
    # the stored ones are young, and referenced anyway).
    for path in [orphan, leftover, stranger, *referenced]:
        os.utime(path, (old, old))

    def orphan_record_removed():
        with open(orphan_segment, "rb") as segment:
            return segment.read(64) == bytes(64)

    restarted = HdsServer(data_dir, extra_args=("--orphan-grace", "1h", "--sweep-interval", "1s")).start()
    try:
        wait_for(lambda: not orphan.exists() and not leftover.exists() and orphan_record_removed(),
                 what="the sweeper to remove the orphans")
        log = wait_for(lambda: re.search(r"orphan sweep.*orphan_blobs_removed=2 temporaries_removed=1", restarted.logs()),
                       what="the sweep's counts in the log")
        assert log
        assert stranger.exists(), "files that are not the store's are left alone"
        assert all(path.exists() for path in referenced)
        for dataset in stored:
            response = retrieve(restarted, dataset)
            assert response.status_code == 200
    finally:
        assert restarted.stop() == 0


# ---- backup and restore -------------------------------------------------------------------------


def run_hds(*args, passphrase="correct horse battery staple"):
    environment = dict(os.environ, HDS_BACKUP_PASSPHRASE=passphrase)
    return subprocess.run([HDS_BIN, *args], capture_output=True, text=True, env=environment, timeout=300)


def instance_bytes(server, dataset):
    response = server.http.get(
        f"{server.url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
        f"/instances/{dataset.SOPInstanceUID}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
    )
    return response.status_code, response.content


def test_an_online_backup_restores_every_instance_and_still_needs_the_key(tmp_path):
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir, extra_args=FAST_CMK_FLAGS).start()
    acknowledged = []
    for _ in range(20):
        dataset = unique_copy("CT_small.dcm")
        store(server, dataset)
        acknowledged.append(dataset)
    originals = {dataset.SOPInstanceUID: instance_bytes(server, dataset) for dataset in acknowledged}
    assert all(status == 200 for status, _ in originals.values())

    # STOWs go on while the backup runs.
    stop = threading.Event()
    during = []

    def load():
        while not stop.is_set():
            dataset = unique_copy("CT_small.dcm")
            try:
                store(server, dataset)
            except (AssertionError, requests.RequestException):
                return
            during.append(dataset)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_for(lambda: len(during) >= 2, what="STOWs under way")
        backup_dir = tmp_path / "backup"
        result = run_hds("backup", "--data-dir", str(data_dir), "--to", str(backup_dir))
        assert result.returncode == 0, result.stderr
    finally:
        stop.set()
        loader.join()
    assert server.stop() == 0

    # The backup holds the root key only sealed.
    root_key = (data_dir / "root.key").read_bytes()
    for path in backup_dir.rglob("*"):
        if path.is_file():
            assert root_key not in path.read_bytes(), f"{path} holds the raw root key"
    assert not (backup_dir / "files" / "admin.json").exists()

    # A wrong passphrase restores nothing.
    restored_dir = tmp_path / "restored"
    wrong = run_hds("restore", "--from", str(backup_dir), "--data-dir", str(restored_dir), passphrase="not the passphrase")
    assert wrong.returncode != 0
    assert "wrong passphrase" in wrong.stderr
    assert not restored_dir.exists() or not any(restored_dir.iterdir())

    result = run_hds("restore", "--from", str(backup_dir), "--data-dir", str(restored_dir))
    assert result.returncode == 0, result.stderr
    restored = HdsServer(restored_dir, extra_args=FAST_CMK_FLAGS).start()
    try:
        for dataset in acknowledged:
            assert instance_bytes(restored, dataset) == originals[dataset.SOPInstanceUID]
        # Those stored during the backup are there whole or not at all.
        for dataset in during:
            status, _ = instance_bytes(restored, dataset)
            assert status in (200, 404)

        # Still sealed under the customer's key: without access to it, nothing is served.
        arm = ArmClient(restored)
        service = arm.get(arm.service_id())
        vault = vault_of(restored, arm)
        vault.set_enabled(key_url_of(service), False)
        wait_data_plane(restored, (500, "CustomerManagedKeyAccessLost"))
        lost = retrieve(restored, acknowledged[0])
        assert lost.status_code == 500
        assert lost.json()["error"]["code"] == "CustomerManagedKeyAccessLost"
    finally:
        assert restored.stop() == 0


def test_backup_refuses_a_short_passphrase_and_a_non_empty_target(tmp_path):
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir).start()
    assert server.stop() == 0
    short = run_hds("backup", "--data-dir", str(data_dir), "--to", str(tmp_path / "b1"), passphrase="short")
    assert short.returncode != 0 and "passphrase" in short.stderr
    assert not (tmp_path / "b1").exists()
    occupied = tmp_path / "b2"
    occupied.mkdir()
    (occupied / "something").write_text("x")
    result = run_hds("backup", "--data-dir", str(data_dir), "--to", str(occupied))
    assert result.returncode != 0 and "not empty" in result.stderr
    missing = run_hds("restore", "--from", str(tmp_path / "nothing"), "--data-dir", str(tmp_path / "r"))
    assert missing.returncode != 0 and "not a complete hds backup" in missing.stderr


# ---- the root key at rest under a passphrase ----------------------------------------------------


def snapshot(directory):
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in directory.rglob("*") if path.is_file()}


def test_a_passphrase_sealed_root_key_starts_only_with_its_passphrase(tmp_path):
    passphrase_file = tmp_path / "root-passphrase"
    passphrase_file.write_text("a long enough passphrase\n")
    passphrase_file.chmod(0o600)
    data_dir = tmp_path / "data"
    flags = ("--root-key-passphrase-file", str(passphrase_file))
    server = HdsServer(data_dir, extra_args=flags).start()
    dataset = unique_copy("CT_small.dcm")
    store(server, dataset)
    assert server.stop() == 0
    assert (data_dir / "root.key.sealed").exists()
    assert not (data_dir / "root.key").exists(), "no plaintext key is written"

    before = snapshot(data_dir)
    wrong = tmp_path / "wrong-passphrase"
    wrong.write_text("not the passphrase at all\n")
    wrong.chmod(0o600)
    for args, message in [
        (("--root-key-passphrase-file", str(wrong)), "wrong passphrase"),
        ((), "sealed under a passphrase"),
    ]:
        failed = subprocess.run(
            [HDS_BIN, "up", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--http", *args],
            capture_output=True, text=True, timeout=120,
        )
        assert failed.returncode != 0
        assert message in failed.stderr, failed.stderr
        assert snapshot(data_dir) == before, "a refused start touches nothing"

    restarted = HdsServer(data_dir, extra_args=flags).start()
    try:
        assert retrieve(restarted, dataset).status_code == 200
    finally:
        assert restarted.stop() == 0


def test_backup_of_a_postgresql_index_is_refused_with_the_documented_procedure(tmp_path, postgres):
    index = postgres.create_database("hds_e2e_backup_refused")
    data_dir = tmp_path / "data"
    server = HdsServer(data_dir, index=index).start()
    try:
        store(server, unique_copy("CT_small.dcm"))
    finally:
        assert server.stop() == 0
    target = tmp_path / "backup"
    for args in (["--index", index], []):
        refused = run_hds("backup", "--data-dir", str(data_dir), "--to", str(target), *args)
        assert refused.returncode != 0
        assert "docs/durability.md" in refused.stderr and "PostgreSQL" in refused.stderr, refused.stderr
        assert not target.exists(), "a refused backup writes nothing"
    assert "pg_dump" in run_hds("backup", "--data-dir", str(data_dir), "--to", str(target), "--index", index).stderr
