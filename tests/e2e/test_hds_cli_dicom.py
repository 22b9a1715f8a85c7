"""`hds dicom ...` against a live `hds up`, as a person without az would use it: a folder of real
pydicom and pydicom-data files stored, searched with --query and --output table/tsv, retrieved to
a folder byte for byte, deleted; a file that is not DICOM named with its failure reason; and the
order in which flags, environment and the saved profile give credentials."""

import json
import os
import pathlib
import shutil
import subprocess

import pydicom

from conftest import HDS_BIN, dicom_file

# Real files in several transfer syntaxes (pydicom ships some instances in several syntaxes
# under one SOPInstanceUID: the test keeps one file per instance).
NAMES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "US1_UNCR.dcm",
    "emri_small.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "rtplan.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
]
CREDENTIAL_VARIABLES = ("HDS_DATA_DIR", "HDS_ENDPOINT", "HDS_CLIENT_ID", "HDS_CLIENT_SECRET", "HDS_TENANT_ID",
                        "HDS_CA_CERT", "HDS_DICOM_SERVICE_URL", "HDS_SUBSCRIPTION_ID")


def clean_env(tmp_path, **extra):
    """The environment without any hds credentials, with an empty profile directory."""
    env = {key: value for key, value in os.environ.items() if key not in CREDENTIAL_VARIABLES}
    env["HDS_CONFIG_DIR"] = str(tmp_path / "config")
    env.update(extra)
    return env


def hds_cli(*args, env):
    return subprocess.run([HDS_BIN, *args], capture_output=True, text=True, env=env, timeout=300)


def real_files(folder: pathlib.Path) -> dict:
    """Copies one file per SOP instance into `folder` (in nested sub-folders); returns
    SOPInstanceUID -> (path, dataset)."""
    chosen = {}
    for index, name in enumerate(NAMES):
        source = dicom_file(name)
        dataset = pydicom.dcmread(str(source), stop_before_pixels=True)
        if dataset.SOPInstanceUID in chosen:
            continue
        target = folder / f"part{index % 3}" / ("deeper" if index % 2 else "") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        chosen[dataset.SOPInstanceUID] = (target, dataset)
    assert len(chosen) >= 6, "too few distinct instances among the test files"
    return chosen


def test_store_search_retrieve_delete_a_folder(hds, tmp_path):
    env = clean_env(tmp_path, HDS_DATA_DIR=str(hds.data_dir), HDS_ENDPOINT=hds.base)
    service = ["--workspace", "default", "--service", "dicom"]
    originals = real_files(tmp_path / "in")

    stored = hds_cli("dicom", "store", str(tmp_path / "in"), "--concurrency", "3", *service, env=env)
    assert stored.returncode == 0, stored.stderr
    summary = json.loads(stored.stdout)
    assert summary["stored"] == len(originals) == summary["files"]
    assert summary["failed"] == 0 and summary["failures"] == []
    assert {item["sopInstanceUid"] for item in summary["instances"]} == set(originals)
    assert summary["bytes"] == sum(path.stat().st_size for path, _ in originals.values())

    # Search with --query, as JSON, then as a table and as TSV.
    studies = {dataset.StudyInstanceUID for _, dataset in originals.values()}
    listed = hds_cli("dicom", "search", "studies", "--limit", "200", "--query", "[].StudyInstanceUID",
                     "--service-url", f"{hds.base}/dicom/default/dicom", env=env)
    assert listed.returncode == 0, listed.stderr
    assert set(json.loads(listed.stdout)) == studies

    ct_path, ct = next((path, d) for path, d in originals.values() if path.name == "CT_small.dcm")
    table = hds_cli("dicom", "search", "instances", "--study", ct.StudyInstanceUID, "--output", "table",
                    "--query", "[].{sop: SOPInstanceUID, series: SeriesInstanceUID}", *service, env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    # Columns in name order (JSON objects here keep no order of their own).
    assert lines[0].split() == ["series", "sop"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == [ct.SeriesInstanceUID, ct.SOPInstanceUID]

    tsv = hds_cli("dicom", "search", "studies", "--match", f"PatientID={ct.PatientID}", "--output", "tsv",
                  "--query", "[].[StudyInstanceUID, PatientID]", *service, env=env)
    assert tsv.returncode == 0, tsv.stderr
    assert [ct.StudyInstanceUID, ct.PatientID] in [line.split("\t") for line in tsv.stdout.splitlines()]

    # Retrieve every study to a folder: each file is the original, byte for byte.
    out = tmp_path / "out"
    for study in studies:
        retrieved = hds_cli("dicom", "retrieve", "--study", study, "--to", str(out), *service, env=env)
        assert retrieved.returncode == 0, retrieved.stderr
        assert json.loads(retrieved.stdout)["failed"] == 0
    for sop, (path, dataset) in originals.items():
        copy = out / dataset.StudyInstanceUID / dataset.SeriesInstanceUID / f"{sop}.dcm"
        assert copy.read_bytes() == path.read_bytes(), path.name
    assert not list(out.rglob("*.partial"))

    # One instance, then delete the CT study: it is gone, and a second delete is an error.
    one = hds_cli("dicom", "retrieve", "--study", ct.StudyInstanceUID, "--series", ct.SeriesInstanceUID,
                  "--instance", ct.SOPInstanceUID, "--to", str(tmp_path / "one"), *service, env=env)
    assert one.returncode == 0, one.stderr
    deleted = hds_cli("dicom", "delete", "--study", ct.StudyInstanceUID, *service, env=env)
    assert deleted.returncode == 0, deleted.stderr
    after = hds_cli("dicom", "search", "studies", "--match", f"StudyInstanceUID={ct.StudyInstanceUID}", *service,
                    env=env)
    assert after.returncode == 0 and json.loads(after.stdout) == []
    again = hds_cli("dicom", "delete", "--study", ct.StudyInstanceUID, *service, env=env)
    assert again.returncode != 0 and "404" in again.stderr

    # Storing the same folder again: every file is refused as already stored (reason 45070),
    # the deleted CT is stored anew; the exit code says something failed.
    repeat = hds_cli("dicom", "store", str(tmp_path / "in"), *service, env=env)
    assert repeat.returncode != 0
    summary = json.loads(repeat.stdout)
    assert summary["stored"] == 1 and summary["failed"] == len(originals) - 1
    assert summary["failureReasons"] == {"45070": len(originals) - 1}
    assert "already stored" in repeat.stderr


def test_a_file_that_is_not_dicom_is_named_with_its_reason(hds, tmp_path):
    env = clean_env(tmp_path, HDS_DATA_DIR=str(hds.data_dir), HDS_ENDPOINT=hds.base)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "notes.txt").write_text("this is not a DICOM file\n" * 10)
    shutil.copyfile(dicom_file("CT_small.dcm"), folder / "ct.dcm")
    result = hds_cli("dicom", "store", str(folder), "--workspace", "default", "--service", "dicom", env=env)
    assert result.returncode != 0
    summary = json.loads(result.stdout)
    assert summary["stored"] == 1 and summary["failed"] == 1
    failure = summary["failures"][0]
    assert failure["path"].endswith("notes.txt")
    assert failure["failureReason"] == 272
    assert "notes.txt: not stored (failure reason 272" in result.stderr
    assert "1 of 2 files were not stored" in result.stderr


def test_hostile_inputs_are_refused_before_any_request(tmp_path):
    env = clean_env(tmp_path, HDS_ENDPOINT="https://127.0.0.1:1", HDS_TENANT_ID="t", HDS_CLIENT_ID="c",
                    HDS_CLIENT_SECRET="s")
    service = ["--workspace", "default", "--service", "dicom"]
    cases = [
        (["dicom", "delete", "--study", "../../etc", *service], "not a DICOM UID"),
        (["dicom", "retrieve", "--study", "1.2", "--series", "1.2/3", "--to", str(tmp_path), *service],
         "not a DICOM UID"),
        (["dicom", "search", "studies", "--match", "Patient Name=x", *service], "DICOM keyword"),
        (["dicom", "search", "studies", "--query", "[?", *service], "not JMESPath"),
        (["dicom", "search", "studies", "--workspace", "a/b", "--service", "dicom"], "--workspace"),
        (["dicom", "search", "studies", "--service-url", "file:///etc/passwd"], "--service-url"),
        (["dicom", "store", str(tmp_path / "missing"), *service], "cannot read"),
        (["dicom", "search", "studies"], "name the DICOM service"),
    ]
    for args, reason in cases:
        result = hds_cli(*args, env=env)
        assert result.returncode != 0, args
        assert reason in result.stderr, (args, result.stderr)
        assert "panicked" not in result.stderr


def token_tenant(result) -> str:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tenant"]


def test_flags_then_environment_then_profile(hds, tmp_path):
    admin = hds.admin()
    # A saved profile of another hds: a tenant this one does not know.
    config = tmp_path / "config"
    config.mkdir()
    profile = config / "profile.json"
    profile.write_text(json.dumps({"endpoint": hds.base, "tenantId": "00000000-0000-0000-0000-00000000beef",
                                   "clientId": admin["clientId"], "clientSecret": admin["clientSecret"]}))
    profile.chmod(0o600)
    env = clean_env(tmp_path)
    token = ["account", "get-access-token", "--resource", "https://management.azure.com"]

    # The profile alone: its tenant is used, and refused.
    alone = hds_cli(*token, env=env)
    assert alone.returncode != 0

    # An explicit --data-dir wins over the profile (it used to lose to it).
    assert token_tenant(hds_cli(*token, "--data-dir", str(hds.data_dir), "--endpoint", hds.base, env=env)) \
        == admin["tenantId"]
    # So does the environment.
    from_env = dict(env, HDS_DATA_DIR=str(hds.data_dir), HDS_ENDPOINT=hds.base)
    assert token_tenant(hds_cli(*token, env=from_env)) == admin["tenantId"]
    # A flag wins over the environment: a wrong secret on the command line is refused.
    wrong_flag = hds_cli(*token, "--client-secret", "not-the-secret", env=from_env)
    assert wrong_flag.returncode != 0 and "invalid_client" in wrong_flag.stderr
    # A data dir given as a flag brings its secret at the flags' level: a wrong HDS_CLIENT_SECRET
    # does not override it.
    wrong_env = dict(env, HDS_CLIENT_SECRET="not-the-secret")
    assert token_tenant(hds_cli(*token, "--data-dir", str(hds.data_dir), "--endpoint", hds.base,
                                env=wrong_env)) == admin["tenantId"]
    # The environment wins over the profile: the profile's right secret loses to the wrong one.
    refused = hds_cli(*token, "--tenant", admin["tenantId"], env=wrong_env)
    assert refused.returncode != 0 and "invalid_client" in refused.stderr
    # az's idiom: the token alone, as TSV.
    bare = hds_cli(*token, "--data-dir", str(hds.data_dir), "--endpoint", hds.base, "--query", "accessToken",
                   "-o", "tsv", env=env)
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.strip().count(".") == 2 and not bare.stdout.startswith('"')
    # A data dir without admin.json is an error, not a fall-back to the profile.
    missing = hds_cli(*token, "--data-dir", str(tmp_path / "nowhere"), env=env)
    assert missing.returncode != 0 and "admin.json" in missing.stderr


def test_control_plane_shortcuts_for_the_seed_steps(hds, tmp_path):
    from conftest import ArmClient

    env = clean_env(tmp_path, HDS_DATA_DIR=str(hds.data_dir), HDS_ENDPOINT=hds.base)
    arm = ArmClient(hds)
    group = ["-g", "default"]

    created = hds_cli("keyvault", "key", "create", "--vault-name", "default", "-n", "cli-key", *group, env=env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    versionless = key["properties"]["keyUri"]
    first_version = key["properties"]["keyUriWithVersion"]

    rotated = hds_cli("keyvault", "key", "rotate", "--vault-name", "default", "-n", "cli-key", *group,
                      "--query", "key.kid", "-o", "tsv", env=env)
    assert rotated.returncode == 0, rotated.stderr
    new_version = rotated.stdout.strip()
    assert new_version.startswith(versionless + "/") and new_version != first_version

    # A new identity, granted by role name at the vault.
    identity = arm.put_identity("cli-identity")
    principal = identity["properties"]["principalId"]
    granted = hds_cli("role", "assignment", "create", "--assignee-object-id", principal,
                      "--role", "Key Vault Crypto Service Encryption User", "--scope", arm.vault_id(), env=env)
    assert granted.returncode == 0, granted.stderr
    assert json.loads(granted.stdout)["properties"]["roleDefinitionId"].endswith("e147488a-f6f5-4113-8e2d-b22465e65bf6")
    assert arm.assignments_of(principal, arm.vault_id())

    # The DICOM service moves to the new key (versionless: it follows rotations) and still serves.
    updated = hds_cli("dicom-service", "update", "--workspace", "default", "-n", "dicom", *group,
                      "--key-url", versionless, env=env)
    assert updated.returncode == 0, updated.stderr
    service = arm.get(arm.service_id())
    assert service["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyUrl"] == versionless
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copyfile(dicom_file("CT_small.dcm"), folder / "ct.dcm")
    stored = hds_cli("dicom", "store", str(folder), "--workspace", "default", "--service", "dicom", env=env)
    assert stored.returncode == 0, stored.stderr

    # Refusals come with the server's reason; hostile names never reach a URL.
    unknown = hds_cli("role", "assignment", "create", "--assignee-object-id", principal, "--role", "No Such Role",
                      "--scope", arm.vault_id(), env=env)
    assert unknown.returncode != 0 and "no role is named" in unknown.stderr
    hostile = hds_cli("keyvault", "key", "create", "--vault-name", "../x", "-n", "k", *group, env=env)
    assert hostile.returncode != 0 and "--vault-name" in hostile.stderr
    bad_url = hds_cli("dicom-service", "update", "--workspace", "default", "-n", "dicom", *group,
                      "--key-url", "http://elsewhere/keys/k", env=env)
    assert bad_url.returncode != 0 and "--key-url" in bad_url.stderr
