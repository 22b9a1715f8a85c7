"""DICOM events against a real `hds up`: an Event Grid system topic on the workspace and a
webhook event subscription created through ARM (the validation handshake answered by a
receiver on 127.0.0.1), then stores and a delete arrive as DicomImageCreated/Deleted in
Azure's shapes, in sequence order; a receiver that fails first gets every event once it
recovers, across an hds restart; the DICOM service's eventState follows. Hostile and
unsupported settings answer 400; a failed handshake leaves the subscription Failed."""

import http.server
import json
import subprocess
import threading
import time
import uuid

import pytest

from conftest import HDS_BIN, ArmClient, HdsServer, fresh_instance, store, wait_for

EG_API = "2022-06-15"
CREATED = "Microsoft.HealthcareApis.DicomImageCreated"
DELETED = "Microsoft.HealthcareApis.DicomImageDeleted"
FAST = ["--event-poll-interval", "100ms", "--event-first-retry", "200ms"]
EVENT_GRID_KEYS = {"id", "topic", "subject", "data", "eventType", "dataVersion", "metadataVersion", "eventTime"}
DATA_KEYS = {"partitionName", "imageStudyInstanceUid", "imageSeriesInstanceUid", "imageSopInstanceUid",
             "serviceHostName", "sequenceNumber"}


class Receiver:
    """A webhook on 127.0.0.1. Answers Event Grid's validation event (or, with `wrong_code`,
    answers it wrongly) and the CloudEvents OPTIONS handshake; records every notification's
    events and headers; answers 503 while `failing` is positive (counting down), or always
    while `down`."""

    def __init__(self, failing=0, wrong_code=False):
        self.failing = failing
        self.down = False
        self.wrong_code = wrong_code
        self.validations = 0
        self.failed_attempts = 0
        self.notifications = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_OPTIONS(self):
                self.send_response(200)
                self.send_header("WebHook-Allowed-Origin", self.headers.get("WebHook-Request-Origin", ""))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                payload = json.loads(body)
                with receiver.lock:
                    if self.headers.get("aeg-event-type") == "SubscriptionValidation":
                        receiver.validations += 1
                        code = "nope" if receiver.wrong_code else payload[0]["data"]["validationCode"]
                        return self.answer(200, {"validationResponse": code})
                    if receiver.down or receiver.failing > 0:
                        receiver.failing = max(0, receiver.failing - 1)
                        receiver.failed_attempts += 1
                        return self.answer(503, {})
                    receiver.notifications.append(({k.lower(): v for k, v in self.headers.items()}, payload))
                return self.answer(200, {})

            def answer(self, status, value):
                data = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.code = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/events?code={self.code}"

    def events(self):
        with self.lock:
            found = []
            for _, payload in self.notifications:
                found.extend(payload if isinstance(payload, list) else [payload])
            return found

    def close(self):
        self.server.shutdown()


def topic_id(arm, name="dicomevents"):
    return f"{arm.group()}/providers/Microsoft.EventGrid/systemTopics/{name}"


def put_topic(arm, name="dicomevents"):
    body = {"location": "local",
            "properties": {"source": arm.workspace_id(), "topicType": "Microsoft.HealthcareApis.Workspaces"}}
    return arm.ok("PUT", topic_id(arm, name), body, api_version=EG_API)


def subscription_body(url, **properties):
    body = {"properties": {
        "destination": {"endpointType": "WebHook", "properties": {"endpointUrl": url}},
        "filter": {"includedEventTypes": [CREATED, DELETED]},
        "eventDeliverySchema": "EventGridSchema",
        "retryPolicy": {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440},
    }}
    body["properties"].update(properties)
    return body


def subscribe(arm, url, name="webhook", **properties):
    """PUTs the event subscription (201, Creating) and waits for its handshake's outcome."""
    path = f"{topic_id(arm)}/eventSubscriptions/{name}"
    response = arm.request("PUT", path, subscription_body(url, **properties), api_version=EG_API)
    assert response.status_code in (200, 201), response.text
    return wait_for(lambda: (lambda r: r if r["properties"]["provisioningState"] in ("Succeeded", "Failed") else None)(
        arm.get(path, api_version=EG_API)), timeout=20, what="the subscription's handshake")


def event_state(arm):
    return arm.get(arm.service_id())["properties"]["eventState"]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    if request.param == "sqlite":
        return "sqlite"
    cluster = request.getfixturevalue("postgres")
    return cluster.create_database(f"hds_events_{int(time.time() * 1000)}")


def test_events_reach_a_webhook_in_order_across_failures_and_a_restart(tmp_path, backend):
    server = HdsServer(tmp_path / "data", index=backend, extra_args=FAST).start()
    receiver = Receiver(failing=2)
    try:
        arm = ArmClient(server)
        assert event_state(arm) == "Disabled"
        topic = put_topic(arm)
        assert topic["properties"]["provisioningState"] == "Succeeded"
        assert topic["properties"]["source"].lower() == arm.workspace_id().lower()
        subscription = subscribe(arm, receiver.url)
        assert subscription["properties"]["provisioningState"] == "Succeeded"
        assert receiver.validations == 1
        webhook = subscription["properties"]["destination"]["properties"]
        assert webhook["endpointUrl"] is None, "the URL (its query may hold a secret) is write only"
        assert webhook["endpointBaseUrl"] == receiver.url.split("?")[0]
        full = arm.ok("POST", f"{topic_id(arm)}/eventSubscriptions/webhook/getFullUrl", api_version=EG_API)
        assert full["endpointUrl"] == receiver.url
        assert event_state(arm) == "Enabled"

        # Two stores and a delete; the receiver fails the first two attempts.
        ct, mr = fresh_instance("CT_small.dcm"), fresh_instance("MR_small.dcm")
        store(server, ct)
        store(server, mr)
        deleted = server.http.delete(
            f"{server.url}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}")
        assert deleted.status_code == 204, deleted.text
        events = wait_for(lambda: receiver.events() if len(receiver.events()) >= 3 else None,
                          timeout=30, what="three events")
        assert receiver.failed_attempts == 2
        assert [(e["eventType"], e["data"]["imageSopInstanceUid"]) for e in events] == [
            (CREATED, ct.SOPInstanceUID), (CREATED, mr.SOPInstanceUID), (DELETED, ct.SOPInstanceUID)]
        sequences = [e["data"]["sequenceNumber"] for e in events]
        assert sequences == sorted(sequences) and len(set(sequences)) == 3
        for event in events:
            assert set(event) == EVENT_GRID_KEYS
            assert set(event["data"]) == DATA_KEYS
            assert event["topic"].lower() == arm.workspace_id().lower()
            assert event["dataVersion"] == "1" and event["metadataVersion"] == "1"
            assert event["data"]["partitionName"] == "Microsoft.Default"
            assert event["eventTime"].endswith("Z")
            host = event["data"]["serviceHostName"]
            assert host == server.url.split("://")[1].rsplit("/v2", 1)[0]
            data = event["data"]
            assert event["subject"] == (f"{host}/v2/studies/{data['imageStudyInstanceUid']}"
                                        f"/series/{data['imageSeriesInstanceUid']}/instances/{data['imageSopInstanceUid']}")
        assert len({e["id"] for e in events}) == 3
        for headers, payload in receiver.notifications:
            assert isinstance(payload, list) and len(payload) == 1, "maxEventsPerBatch defaults to 1"
            assert headers["aeg-event-type"] == "Notification"
            assert headers["aeg-subscription-name"] == "WEBHOOK"
            assert "authorization" not in headers and "cookie" not in headers
        assert receiver.notifications[0][0]["aeg-delivery-count"] == "2"

        # The receiver goes down; a store waits for it across an hds restart and is delivered
        # once it is back.
        receiver.down = True
        third = fresh_instance("CT_small.dcm")
        store(server, third)
        wait_for(lambda: receiver.failed_attempts >= 3, timeout=20, what="an attempt at the new event")
        assert server.stop() == 0
        receiver.down = False
        server.start()
        events = wait_for(lambda: receiver.events() if len(receiver.events()) >= 4 else None,
                          timeout=30, what="the fourth event after the restart")
        assert events[3]["eventType"] == CREATED
        assert events[3]["data"]["imageSopInstanceUid"] == third.SOPInstanceUID
        assert events[3]["data"]["sequenceNumber"] > sequences[-1]
        time.sleep(1)
        assert len(receiver.events()) == 4, "each event once in the normal case"
        assert event_state(ArmClient(server)) == "Enabled"

        # Nothing from an instance in the log.
        logs = server.logs()
        for uid in (ct.SOPInstanceUID, mr.SOPInstanceUID, third.SOPInstanceUID, ct.StudyInstanceUID):
            assert uid not in logs
        assert receiver.code not in logs, "the endpoint URL's query (a secret) stays out of the log"

        # Deleting the subscription stops delivery and turns eventState off.
        arm = ArmClient(server)
        arm.ok("DELETE", f"{topic_id(arm)}/eventSubscriptions/webhook", api_version=EG_API)
        assert event_state(arm) == "Disabled"
        store(server, fresh_instance("MR_small.dcm"))
        time.sleep(1)
        assert len(receiver.events()) == 4
    finally:
        receiver.close()
        server.stop()


def test_cloud_events_templates_failed_handshakes_and_hostile_settings(tmp_path):
    server = HdsServer(tmp_path / "data", extra_args=FAST).start()
    good, wrong = Receiver(), Receiver(wrong_code=True)
    try:
        arm = ArmClient(server)
        path = f"{topic_id(arm)}/eventSubscriptions/hostile"

        # The topic: a workspace source only, one per source.
        bad_source = {"location": "local", "properties": {"source": arm.vault_id(), "topicType": "Microsoft.HealthcareApis.Workspaces"}}
        assert arm.request("PUT", topic_id(arm), bad_source, api_version=EG_API).status_code == 400
        put_topic(arm)
        second = arm.request("PUT", topic_id(arm, "another"), {"location": "local", "properties": {
            "source": arm.workspace_id(), "topicType": "Microsoft.HealthcareApis.Workspaces"}}, api_version=EG_API)
        assert second.status_code == 400 and "one system topic" in second.text

        # Settings refused before anything is stored or called.
        hostile = [
            subscription_body("http://example.com/hook"),
            subscription_body("https://user:pass@example.com/hook"),
            subscription_body("https://example.com/" + "a" * 5000),
            subscription_body(server.base + "/subscriptions"),
            subscription_body(good.url, destination={"endpointType": "EventHub", "properties": {"resourceId": "x"}}),
            subscription_body(good.url, destination={"endpointType": "WebHook", "properties": {"endpointUrl": good.url, "maxEventsPerBatch": 0}}),
            subscription_body(good.url, filter={"includedEventTypes": ["Microsoft.Storage.BlobCreated"]}),
            subscription_body(good.url, filter={"includedEventTypes": [CREATED] * 26}),
            subscription_body(good.url, filter={"subjectBeginsWith": "x" * 2000}),
            subscription_body(good.url, filter={"advancedFilters": [{"operatorType": "StringIn", "key": "data.x", "values": ["1"]}]}),
            subscription_body(good.url, retryPolicy={"maxDeliveryAttempts": 31}),
            subscription_body(good.url, eventDeliverySchema="CustomInputSchema"),
            subscription_body(good.url, deadLetterDestination={"endpointType": "StorageBlob"}),
        ]
        for body in hostile:
            response = arm.request("PUT", path, body, api_version=EG_API)
            assert response.status_code == 400, (body, response.text)
        assert good.validations == 0
        assert arm.request("GET", path, api_version=EG_API).status_code == 404

        # A wrong validationResponse: Failed, and eventState stays Disabled.
        failed = subscribe(arm, wrong.url, name="wrong")
        assert failed["properties"]["provisioningState"] == "Failed"
        assert wrong.validations == 1
        assert event_state(arm) == "Disabled"

        # CloudEvents 1.0, validated through the OPTIONS handshake.
        cloud = subscribe(arm, good.url, name="cloud", eventDeliverySchema="CloudEventSchemaV1_0")
        assert cloud["properties"]["provisioningState"] == "Succeeded"
        assert cloud["properties"]["eventDeliverySchema"] == "CloudEventSchemaV1_0"
        dataset = fresh_instance()
        store(server, dataset)
        events = wait_for(lambda: good.events() or None, timeout=20, what="a CloudEvent")
        event = events[0]
        assert set(event) == {"specversion", "id", "source", "subject", "type", "time", "data"}
        assert event["specversion"] == "1.0" and event["type"] == CREATED
        assert event["source"].lower() == arm.workspace_id().lower()
        assert event["data"]["imageSopInstanceUid"] == dataset.SOPInstanceUID
        headers = good.notifications[0][0]
        assert headers["content-type"].startswith("application/cloudevents+json")
        arm.ok("DELETE", f"{topic_id(arm)}/eventSubscriptions/cloud", api_version=EG_API)
        arm.ok("DELETE", f"{topic_id(arm)}/eventSubscriptions/wrong", api_version=EG_API)
        arm.ok("DELETE", topic_id(arm), api_version=EG_API)

        # The same resources from an ARM template (the deployment waits for the handshake).
        result = subprocess.run(
            [HDS_BIN, "deployment", "group", "create", "-g", "default",
             "-f", str(pathlib_fixture("arm-template-events.json")), "--data-dir", str(server.data_dir),
             "--endpoint", server.base, "-p", "workspaceName=default", f"endpointUrl={good.url}"],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        templated = arm.get(f"{topic_id(arm, 'default-events')}/eventSubscriptions/webhook", api_version=EG_API)
        assert templated["properties"]["provisioningState"] == "Succeeded"
        assert event_state(arm) == "Enabled"
        before = len(good.events())
        second_instance = fresh_instance("MR_small.dcm")
        store(server, second_instance)
        events = wait_for(lambda: good.events()[before:] or None, timeout=20, what="the templated subscription's event")
        assert events[0]["eventType"] == CREATED
        assert events[0]["data"]["imageSopInstanceUid"] == second_instance.SOPInstanceUID
    finally:
        good.close()
        wrong.close()
        server.stop()


def pathlib_fixture(name):
    import pathlib

    return pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "arm" / name


CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
ISSUER = "https://login.example.org/events/v2.0"


def test_routing_a_workspaces_events_needs_rights_on_the_workspace(tmp_path):
    """A Contributor of the workspace's group may create the topic and a subscription; a
    Contributor of another group only may not route the workspace's events there (403
    LinkedAuthorizationFailed); a Reader may not write at all."""
    from conftest import ExternalIssuer

    issuer = ExternalIssuer(tmp_path, ISSUER, kid="events-1")
    server = HdsServer(tmp_path / "data", extra_args=[*issuer.flag(), *FAST]).start()
    receiver = Receiver()
    try:
        arm = ArmClient(server)
        arm.put_group("eventsrg")

        def session_of(name, role, scope):
            subject = f"events-{name}"
            arm.grant(issuer.principal_id(subject, arm.tenant_id), scope, role=role)
            claims = {**issuer.user_claims("https://management.azure.com", subject), "tid": arm.tenant_id}
            client = ArmClient(server)
            client.session.headers["Authorization"] = f"Bearer {issuer.token(claims)}"
            return client

        elsewhere = session_of("elsewhere", CONTRIBUTOR, arm.group("eventsrg"))
        reader = session_of("reader", READER, arm.group())
        owner = session_of("owner", CONTRIBUTOR, arm.group())
        topic_body = {"location": "local", "properties": {
            "source": arm.workspace_id(), "topicType": "Microsoft.HealthcareApis.Workspaces"}}
        foreign_topic = f"{arm.group('eventsrg')}/providers/Microsoft.EventGrid/systemTopics/stolen"

        refused = elsewhere.request("PUT", foreign_topic, topic_body, api_version=EG_API)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "LinkedAuthorizationFailed"
        assert reader.request("PUT", topic_id(arm), topic_body, api_version=EG_API).status_code == 403

        # The admin makes a topic in the other group; its Contributor still may not subscribe.
        arm.ok("PUT", foreign_topic, topic_body, api_version=EG_API)
        refused = elsewhere.request("PUT", f"{foreign_topic}/eventSubscriptions/hook",
                                    subscription_body(receiver.url), api_version=EG_API)
        assert refused.status_code == 403, refused.text
        assert receiver.validations == 0
        arm.ok("DELETE", foreign_topic, api_version=EG_API)

        assert owner.request("PUT", topic_id(arm), topic_body, api_version=EG_API).status_code in (200, 201)
        subscription = subscribe(owner, receiver.url)
        assert subscription["properties"]["provisioningState"] == "Succeeded"
        assert event_state(arm) == "Enabled"
        assert reader.get(f"{topic_id(arm)}/eventSubscriptions/webhook", api_version=EG_API)["properties"][
            "destination"]["properties"]["endpointUrl"] is None
        assert reader.request("POST", f"{topic_id(arm)}/eventSubscriptions/webhook/getFullUrl",
                              api_version=EG_API).status_code == 403
    finally:
        receiver.close()
        server.stop()


def test_lost_key_access_holds_events_back_until_the_key_is_back(tmp_path):
    """A change waiting for its webhook is not sent while the service's customer-managed key is
    disabled (its UIDs cannot be opened, and the service serves nothing); once the key is
    enabled again it is delivered, once."""
    from conftest import FAST_CMK_FLAGS, key_url_of, vault_of, wait_data_plane

    server = HdsServer(tmp_path / "data", extra_args=[*FAST, *FAST_CMK_FLAGS]).start()
    receiver = Receiver()
    try:
        arm = ArmClient(server)
        put_topic(arm)
        assert subscribe(arm, receiver.url)["properties"]["provisioningState"] == "Succeeded"
        receiver.down = True
        dataset = fresh_instance()
        store(server, dataset)
        wait_for(lambda: receiver.failed_attempts >= 1, timeout=20, what="a first attempt")

        key_url = key_url_of(arm.get(arm.service_id()))
        vault = vault_of(server, arm)
        vault.set_enabled(key_url, False)
        wait_data_plane(server, (500, "CustomerManagedKeyAccessLost"))
        receiver.down = False
        attempts = receiver.failed_attempts
        time.sleep(3)
        assert receiver.events() == [] and receiver.failed_attempts == attempts, "nothing while the key is lost"

        vault.set_enabled(key_url, True)
        wait_data_plane(server, (200, None))
        events = wait_for(lambda: receiver.events() or None, timeout=30, what="the held-back event")
        assert [e["data"]["imageSopInstanceUid"] for e in events] == [dataset.SOPInstanceUID]
        time.sleep(1)
        assert len(receiver.events()) == 1
    finally:
        receiver.close()
        assert server.stop() == 0
