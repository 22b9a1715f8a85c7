"""End to end: observability. `hds up --metrics-listen` serves Prometheus metrics that move with
DICOMweb traffic and key-vault calls and carry no PHI; `HDS_LOG_FORMAT=json` writes one JSON
object per line, with no PHI either."""

import json

import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import FAST_CMK_FLAGS, ArmClient, HdsServer, free_port, fresh_instance, retrieve, store

# Values stored in the instance that must never reach a scrape or a log line.
PATIENT_NAME = "Obsmarker^Quintessa"
PATIENT_ID = "OBS-PHI-7731"


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """hds with metrics on a loopback port and JSON logs, after one STOW, WADO and QIDO of an
    instance carrying marker values."""
    data_dir = tmp_path_factory.mktemp("observed") / "data"
    metrics_address = f"127.0.0.1:{free_port()}"
    server = HdsServer(data_dir, extra_args=(*FAST_CMK_FLAGS, "--metrics-listen", metrics_address),
                       env={"HDS_LOG_FORMAT": "json"}).start()
    server.metrics_url = f"http://{metrics_address}/metrics"
    yield server
    assert server.stop() == 0, "hds did not stop cleanly on SIGTERM"


def scrape(server) -> tuple[str, dict]:
    """The scrape's text and its samples as {(name, sorted labels): value}, parsed by the
    Prometheus client's OpenMetrics parser (which refuses malformed exposition)."""
    response = requests.get(server.metrics_url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def total(samples: dict, name: str, **labels) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(value for (sample_name, sample_labels), value in samples.items()
               if sample_name == name and set(labels.items()) <= set(sample_labels))


def test_metrics_move_with_dicomweb_and_key_vault_calls_and_carry_no_phi(observed):
    server = observed
    _, before = scrape(server)
    dataset = fresh_instance()
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    store(server, dataset)
    retrieved = retrieve(server, dataset)
    assert retrieved.status_code == 200
    found = server.http.get(f"{server.url}/studies", params={"PatientID": PATIENT_ID})
    assert found.status_code == 200 and len(found.json()) == 1
    # The seed's "update the DICOM service": the key is validated again (get, wrap, unwrap).
    arm = ArmClient(server)
    arm.update_service(arm.service_id())
    text, after = scrape(server)

    stow_route = "/dicom/{workspace}/{service}/{version}/studies"
    wado_route = "/dicom/{workspace}/{service}/{version}/studies/{study}/series/{series}/instances/{instance}"
    assert total(after, "hds_http_requests_total", route=stow_route, method="POST", status="200") \
        > total(before, "hds_http_requests_total", route=stow_route, method="POST", status="200")
    assert total(after, "hds_http_requests_total", route=stow_route, method="GET", status="200") \
        > total(before, "hds_http_requests_total", route=stow_route, method="GET", status="200")
    assert total(after, "hds_http_requests_total", route=wado_route, method="GET", status="200") >= 1
    assert total(after, "hds_http_request_duration_seconds_count", route=wado_route) >= 1
    # Bytes: at least the instance went in and came out.
    size = len(retrieved.content)
    assert total(after, "hds_dicomweb_bytes_total", operation="stow") \
        - total(before, "hds_dicomweb_bytes_total", operation="stow") >= size // 2
    assert total(after, "hds_dicomweb_bytes_total", operation="wado") \
        - total(before, "hds_dicomweb_bytes_total", operation="wado") >= size
    for operation in ("get", "wrap", "unwrap"):
        assert total(after, "hds_key_vault_calls_total", operation=operation, outcome="ok") \
            > total(before, "hds_key_vault_calls_total", operation=operation, outcome="ok"), operation
        assert total(after, "hds_key_vault_call_duration_seconds_count", operation=operation) >= 1
    # The default service's key access is healthy, reported under its internal id.
    healthy = [labels for (name, labels), value in after.items()
               if name == "hds_key_access_state" and ("state", "Healthy") in labels and value == 1]
    assert len(healthy) == 1
    assert total(after, "hds_index_group_commit_size_count") >= 1
    assert total(after, "hds_http_open_connections") >= 1
    # No PHI: no UID, patient name or id of the instance, no route filled with values.
    for value in (dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID,
                  PATIENT_ID, "Obsmarker", "Quintessa"):
        assert value not in text, value


def test_unmatched_paths_share_one_label(observed):
    server = observed
    secret_path = "/dicom/nope/1.2.3.4.5.6.7.8.9.unmatched"
    server.http.get(f"{server.base}{secret_path}")
    text, samples = scrape(server)
    assert "1.2.3.4.5.6.7.8.9" not in text
    assert total(samples, "hds_http_requests_total", route="(unmatched)") >= 1


def test_json_logs_parse_line_by_line_and_carry_no_phi(observed):
    server = observed
    dataset = fresh_instance()
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    store(server, dataset)
    assert retrieve(server, dataset).status_code == 200
    server.http.get(f"{server.url}/studies", params={"PatientID": PATIENT_ID, "PatientName": PATIENT_NAME})
    # The server may be writing a record right now: only whole lines (ended by a newline) count.
    logged = server.logs()
    lines = [line for line in logged[: logged.rfind("\n") + 1].splitlines() if line.strip()]
    requests_logged = 0
    for line in lines:
        record = json.loads(line)
        assert {"timestamp", "level", "fields"} <= set(record), line
        if record.get("span", {}).get("name") == "request":
            requests_logged += 1
    assert requests_logged > 0, "request spans appear in the JSON lines"
    log = "\n".join(lines)
    for value in (dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID,
                  PATIENT_ID, "Obsmarker", "Quintessa"):
        assert value not in log, value
