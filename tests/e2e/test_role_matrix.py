"""Who may do what, as a table, against one real `hds up`: every DICOMweb route, the key vault's
data plane and the control plane's routes, each called by a principal holding one built-in role
(or none, or no token at all) at a scope that covers the target and at one that does not.

- Scopes that cover the target: the DICOM service (service A) or its resource group for
  DICOMweb, the vault (vault A) or its group for keys, the resource group (group A) for ARM.
  There the table's status applies.
- Their siblings: the same role on service B, vault B, group B (and, for ARM, on service B).
  Every cell there is refused with 403: a role reaches only what is under its scope. Each
  sibling's name is a prefix of its target's, so a scope compared as a string would show.
- Deny is the default: a principal with no role gets 403, a request with no token 401.

Each (route, role, scope) cell is one test id, e.g. `wado-instance-DicomDataReader-service` or
`key-wrap-CryptoOfficer-othervault`. Principals are external users of an issuer hds trusts
(`--trust-issuer`), one per (family, role, scope), made once per module; cells that change or
remove something act on objects of their own, and a refused delete must leave its target.

The same DICOMweb routes under `partitions/{name}/` of a service with data partitions, and
`GET partitions`, need the same roles (family `partition`, e.g. `p-stow-DicomDataOwner-group`).

Then lost key access: a DICOM service whose managed identity lost its role on the vault answers
500 `CustomerManagedKeyAccessLost` on every data route, but only to a caller allowed to make the
request; a caller without a token gets 401 and one without the DICOM role there 403."""

import base64
import io
import os
import uuid

import pytest
import requests

from conftest import (
    CRYPTO_SERVICE_ENCRYPTION_USER,
    FAST_CMK_FLAGS,
    ArmClient,
    ExternalIssuer,
    HdsServer,
    fresh_instance,
    key_url_of,
    store,
    wait_data_plane,
    wait_for,
)

ISSUER = "https://login.example.org/matrix/v2.0"
DICOM = "https://dicom.healthcareapis.azure.com"
VAULT = "https://vault.azure.net"
MANAGEMENT = "https://management.azure.com"

ROLES = {
    "Reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
    "DicomDataReader": "e89c7a3c-2f64-4fa1-a847-3e4c9ba4283a",
    "DicomDataOwner": "58a3b984-7adf-4c20-983a-32417c86fbc8",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "Owner": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "CryptoServiceEncryptionUser": CRYPTO_SERVICE_ENCRYPTION_USER,
    "CryptoOfficer": "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
}
COLUMNS = ("none", *ROLES)

# ---- the matrix: the status each role gets at a scope covering the target ------------------------
# At a sibling scope: 403 in every column. No token: 401 on every route.

DICOM_ROUTES = [
    # route                 none Reader DDR  DDO  Contr Owner CSEU Officer
    ("stow",                403, 403,   403, 200, 403,  403,  403, 403),
    ("stow-in-study",       403, 403,   403, 200, 403,  403,  403, 403),
    ("upsert",              403, 403,   403, 200, 403,  403,  403, 403),
    ("upsert-in-study",     403, 403,   403, 200, 403,  403,  403, 403),
    ("wado-study",          403, 403,   200, 200, 403,  403,  403, 403),
    ("wado-series",         403, 403,   200, 200, 403,  403,  403, 403),
    ("wado-instance",       403, 403,   200, 200, 403,  403,  403, 403),
    ("wado-frames",         403, 403,   200, 200, 403,  403,  403, 403),
    ("metadata-study",      403, 403,   200, 200, 403,  403,  403, 403),
    ("metadata-series",     403, 403,   200, 200, 403,  403,  403, 403),
    ("metadata-instance",   403, 403,   200, 200, 403,  403,  403, 403),
    ("rendered-instance",   403, 403,   200, 200, 403,  403,  403, 403),
    ("rendered-frame",      403, 403,   200, 200, 403,  403,  403, 403),
    ("thumbnail-study",     403, 403,   200, 200, 403,  403,  403, 403),
    ("qido-studies",        403, 403,   200, 200, 403,  403,  403, 403),
    ("qido-series",         403, 403,   200, 200, 403,  403,  403, 403),
    ("qido-instances",      403, 403,   200, 200, 403,  403,  403, 403),
    ("qido-study-series",   403, 403,   200, 200, 403,  403,  403, 403),
    ("qido-study-instances", 403, 403,  200, 200, 403,  403,  403, 403),
    ("qido-series-instances", 403, 403, 200, 200, 403,  403,  403, 403),
    ("changefeed",          403, 403,   200, 200, 403,  403,  403, 403),
    ("changefeed-latest",   403, 403,   200, 200, 403,  403,  403, 403),
    ("delete-study",        403, 403,   403, 204, 403,  403,  403, 403),
    ("delete-series",       403, 403,   403, 204, 403,  403,  403, 403),
    ("delete-instance",     403, 403,   403, 204, 403,  403,  403, 403),
    # Extended query tags: reads need read; changes need ManageExtendedQueryTags (DDO's `*`).
    # The changes name nothing that exists, so an allowed caller gets the handler's 400/404.
    ("eqt-list",            403, 403,   200, 200, 403,  403,  403, 403),
    ("eqt-errors",          403, 403,   404, 404, 403,  403,  403, 403),
    ("operation-get",       403, 403,   404, 404, 403,  403,  403, 403),
    ("eqt-add",             403, 403,   403, 400, 403,  403,  403, 403),
    ("eqt-patch",           403, 403,   403, 404, 403,  403,  403, 403),
    ("eqt-delete",          403, 403,   403, 404, 403,  403,  403, 403),
    # Export needs Azure's export data action (DDO's `*`); an empty body is the handler's 400.
    ("export",              403, 403,   403, 400, 403,  403,  403, 403),
    # UPS-RS workitems: retrieve and search need read, every other transaction write (as Azure).
    # They name no workitem that exists (or send an empty body), so an allowed caller gets the
    # handler's 204/400/404 and nothing changes.
    ("ups-search",          403, 403,   204, 204, 403,  403,  403, 403),
    ("ups-retrieve",        403, 403,   404, 404, 403,  403,  403, 403),
    ("ups-create",          403, 403,   403, 400, 403,  403,  403, 403),
    ("ups-update",          403, 403,   403, 404, 403,  403,  403, 403),
    ("ups-state",           403, 403,   403, 404, 403,  403,  403, 403),
    ("ups-cancel",          403, 403,   403, 404, 403,  403,  403, 403),
    # Bulk update needs write (Azure's DataActions.Write). The body changes an attribute that
    # cannot be updated, so an allowed caller gets the handler's 400 and nothing starts.
    ("bulk-update",         403, 403,   403, 400, 403,  403,  403, 403),
]

# The same data routes under `partitions/{name}/` of a service with data partitions (service C,
# in group A), and `GET partitions`: the same data actions as without a partition. Service C is
# not service A, so a role on service A is a sibling's there (403); a role on group A covers it.
# Export is the service's route only; bulk update under a partition is refused with a 400 after
# the same authorization.
SERVICE_LEVEL = ("changefeed", "changefeed-latest", "eqt-", "operation-get", "export")
PARTITION_ROUTES = [
    (f"p-{route}", *statuses) for route, *statuses in DICOM_ROUTES if not route.startswith(SERVICE_LEVEL)
] + [
    # route                 none Reader DDR  DDO  Contr Owner CSEU Officer
    ("partitions-list",     403, 403,   200, 200, 403,  403,  403, 403),
]

VAULT_ROUTES = [
    # route                 none Reader DDR  DDO  Contr Owner CSEU Officer
    ("key-create",          403, 403,   403, 403, 403,  403,  403, 200),
    ("key-get",             403, 403,   403, 403, 403,  403,  200, 200),
    ("key-list",            403, 403,   403, 403, 403,  403,  200, 200),
    ("key-wrap",            403, 403,   403, 403, 403,  403,  200, 200),
    ("key-unwrap",          403, 403,   403, 403, 403,  403,  200, 200),
    ("key-delete",          403, 403,   403, 403, 403,  403,  403, 200),
    ("key-purge",           403, 403,   403, 403, 403,  403,  403, 204),
]

ARM_ROUTES = [
    # route                 none Reader DDR  DDO  Contr Owner CSEU Officer
    ("group-get",           403, 200,   403, 403, 200,  200,  403, 200),
    ("group-put",           403, 403,   403, 403, 200,  200,  403, 403),
    ("group-delete",        403, 403,   403, 403, 200,  200,  403, 403),
    ("workspace-get",       403, 200,   403, 403, 200,  200,  403, 403),
    ("workspace-put",       403, 403,   403, 403, 201,  201,  403, 403),
    ("workspace-delete",    403, 403,   403, 403, 200,  200,  403, 403),
    ("dicomservice-get",    403, 200,   403, 403, 200,  200,  403, 403),
    ("dicomservice-put",    403, 403,   403, 403, 201,  201,  403, 403),
    ("dicomservice-delete", 403, 403,   403, 403, 200,  200,  403, 403),
    ("vault-get",           403, 200,   403, 403, 200,  200,  403, 403),
    ("vault-put",           403, 403,   403, 403, 201,  201,  403, 403),
    ("vault-delete",        403, 403,   403, 403, 200,  200,  403, 403),
    ("identity-get",        403, 200,   403, 403, 200,  200,  403, 403),
    ("identity-put",        403, 403,   403, 403, 201,  201,  403, 403),
    ("identity-delete",     403, 403,   403, 403, 200,  200,  403, 403),
    ("roleassignment-list", 403, 200,   403, 403, 200,  200,  403, 200),
    ("roleassignment-put",  403, 403,   403, 403, 403,  201,  403, 403),
    ("roleassignment-delete", 403, 403, 403, 403, 403,  200,  403, 403),
    ("deployment-get",      403, 200,   403, 403, 200,  200,  403, 200),
    ("deployment-put",      403, 403,   403, 403, 201,  201,  403, 201),
    ("deployment-delete",   403, 403,   403, 403, 200,  200,  403, 200),
    # A deployment creating a user-assigned identity; the status is the identity's afterwards
    # (GET as the admin once the deployment ended): each resource is written as the caller, so
    # a role that may deploy but not write identities (Crypto Officer) creates nothing.
    ("deployment-put-identity", 403, 403, 403, 403, 200,  200,  403, 404),
]

FAMILIES = {"dicom": DICOM_ROUTES, "partition": PARTITION_ROUTES, "vault": VAULT_ROUTES, "arm": ARM_ROUTES}

# Where a family's roles are assigned: scopes that cover what the routes act on (the table's
# value applies), and their siblings (403).
SCOPES = {
    "dicom": {"service": True, "group": True, "otherservice": False, "othergroup": False},
    # Partition routes: the principals of the DICOM family, on service C (covered by group A).
    "partition": {"service": False, "group": True, "otherservice": False, "othergroup": False},
    "vault": {"vault": True, "group": True, "othervault": False, "othergroup": False},
    "arm": {"group": True, "othergroup": False, "otherservice": False},
}


def cells():
    """(family, route, column, scope, expected status) for every cell of the matrix."""
    for family, table in FAMILIES.items():
        for route, *statuses in table:
            assert len(statuses) == len(COLUMNS), route
            yield pytest.param(family, route, "anonymous", "-", 401, id=f"{route}-anonymous")
            for column, status in zip(COLUMNS, statuses):
                if column == "none":
                    yield pytest.param(family, route, column, "-", status, id=f"{route}-none")
                    continue
                for scope, covers in SCOPES[family].items():
                    yield pytest.param(family, route, column, scope, status if covers else 403,
                                       id=f"{route}-{column}-{scope}")


# ---- the world: one hds, its resources and one principal per (role, scope) ----------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Principal:
    """An external user holding the roles the world assigned it; sessions per audience."""

    def __init__(self, issuer: ExternalIssuer, tenant: str, name: str):
        self.name = name
        self.oid = f"matrix-{name}"
        # In hds's tenant: a vault takes tokens of its own tenant only.
        self.principal_id = issuer.principal_id(self.oid, tenant)
        claims = {**issuer.user_claims(DICOM, self.oid), "tid": tenant}
        # Long enough for any run of the module (the maximum hds accepts is 24 hours).
        claims["exp"] = claims["iat"] + 3 * 3600
        self.sessions = {}
        for audience in (DICOM, VAULT, MANAGEMENT):
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {issuer.token({**claims, 'aud': audience})}"
            self.sessions[audience] = session


class World:
    """What the cells act on: group A is the seed's `default` group, with service A (the seed's
    `default/dicom`) and vault A. Each sibling's name is a prefix of its target's (group
    `defaul`, service `default/dic`, vault `matrixvault`), so a scope compared as a string
    rather than by path segments would let a sibling's role through."""

    def __init__(self, server: HdsServer, issuer: ExternalIssuer):
        self.server = server
        self.issuer = issuer
        self.arm = ArmClient(server)
        arm = self.arm
        self.counter = 0
        self.group_a, self.group_b = arm.group("default"), arm.group("defaul")
        arm.put_group("defaul")

        # DICOM: service A is the seed's; service B another in its workspace (platform key).
        self.service_a = arm.service_id()
        self.url_a = server.url
        self.service_b = arm.service_id(service="dic")
        arm.ok("PUT", self.service_b, {"location": "local"})
        self.stored = fresh_instance()
        store(server, self.stored, self.url_a)
        # Service C has data partitions; the cells use its partition `matrix-p1`.
        self.service_c = arm.service_id(service="matrixpart")
        created = arm.ok("PUT", self.service_c, {"location": "local", "properties": {"enableDataPartitions": True}})
        self.url_c = created["properties"]["serviceUrl"] + "/v2"
        self.url_p = self.url_c + "/partitions/matrix-p1"
        self.stored_p = fresh_instance()
        store(server, self.stored_p, self.url_p)

        # Vaults: A without purge protection (so a purge can succeed), and B.
        arm.put_vault("matrixvaulta", "default", enablePurgeProtection=False)
        arm.put_vault("matrixvault", "default")
        self.vault_a, self.vault_b = arm.vault_id("matrixvaulta"), arm.vault_id("matrixvault")
        self.vault_uri = arm.get(self.vault_a, api_version="2022-07-01")["properties"]["vaultUri"].rstrip("/")
        self.vault_admin = requests.Session()
        self.vault_admin.headers["Authorization"] = f"Bearer {server.token(VAULT)}"
        self.key = self.create_key("matrixkey")
        self.wrapped = self.vault_call(self.vault_admin, "POST", f"/keys/matrixkey/{self.key_version}/wrapkey",
                                       {"alg": "RSA-OAEP-256", "value": b64url(os.urandom(32))})
        assert self.wrapped.status_code == 200, self.wrapped.text
        self.wrapped = self.wrapped.json()["value"]

        # ARM: a deployment to read.
        assert self.deploy(arm.session, "matrixbase").status_code in (200, 201)

        # Principals: nobody's roles, and one per (role, scope).
        self.nobody = Principal(issuer, arm.tenant_id, "none")
        self.principals = {}
        scope_ids = {
            "dicom": {"service": self.service_a, "otherservice": self.service_b},
            "vault": {"vault": self.vault_a, "othervault": self.vault_b},
            "arm": {"otherservice": self.service_b},
        }
        for family, scopes in SCOPES.items():
            if family == "partition":
                continue  # the DICOM family's principals
            ids = {"group": self.group_a, "othergroup": self.group_b, **scope_ids[family]}
            for role, guid in ROLES.items():
                for scope in scopes:
                    principal = Principal(issuer, arm.tenant_id, f"{family}-{role}-{scope}")
                    arm.grant(principal.principal_id, ids[scope], guid)
                    self.principals[(family, role, scope)] = principal

    def unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    # -- helpers the cells share

    def vault_call(self, session, method, path, body=None) -> requests.Response:
        return session.request(method, f"{self.vault_uri}{path}", params={"api-version": "7.4"}, json=body,
                               verify=self.server.ca_path)

    def create_key(self, name) -> dict:
        created = self.vault_call(self.vault_admin, "POST", f"/keys/{name}/create",
                                  {"kty": "RSA", "key_size": 2048, "key_ops": ["wrapKey", "unwrapKey"]})
        assert created.status_code == 200, created.text
        if name == "matrixkey":
            self.key_version = created.json()["key"]["kid"].rsplit("/", 1)[1]
        return created.json()

    def deploy(self, session, name, resources=()) -> requests.Response:
        template = {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
                    "contentVersion": "1.0.0.0", "resources": list(resources)}
        return session.put(f"{self.server.base}{self.arm.group()}/providers/Microsoft.Resources/deployments/{name}",
                           params={"api-version": "2022-09-01"},
                           json={"properties": {"mode": "Incremental", "template": template}})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    directory = tmp_path_factory.mktemp("matrix")
    issuer = ExternalIssuer(directory, ISSUER, kid="matrix-1")
    server = HdsServer(directory / "data", extra_args=[*issuer.flag(), *FAST_CMK_FLAGS]).start()
    try:
        yield World(server, issuer)
    finally:
        assert server.stop() == 0, "hds did not stop cleanly on SIGTERM"


# ---- the routes ---------------------------------------------------------------------------------

MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def stow_body(dataset):
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    boundary = "hds-matrix-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue()
            + f"\r\n--{boundary}--\r\n".encode())
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                  "Accept": "application/dicom+json"}


def dicom_call(route, session, url, dataset, own):
    """One DICOMweb request of `route` against the service at `url`. `dataset` is stored there;
    `own` is a callable that stores and returns an instance of the cell's own (for deletes)."""
    study, series, instance = dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    study_url = f"{url}/studies/{study}"
    series_url = f"{study_url}/series/{series}"
    instance_url = f"{series_url}/instances/{instance}"
    if route in ("stow", "stow-in-study"):
        fresh = fresh_instance()
        if route == "stow-in-study":
            fresh.StudyInstanceUID = study
        body, headers = stow_body(fresh)
        target = f"{url}/studies" if route == "stow" else f"{url}/studies/{fresh.StudyInstanceUID}"
        return session.post(target, data=body, headers=headers)
    if route in ("upsert", "upsert-in-study"):
        # Replaces an instance of the cell's own when the cell may write: the stored one stays.
        mine = own()
        body, headers = stow_body(mine)
        target = f"{url}/studies" if route == "upsert" else f"{url}/studies/{mine.StudyInstanceUID}"
        return session.put(target, data=body, headers=headers)
    if route == "eqt-add":
        return session.post(f"{url}/extendedquerytags", json=[])
    if route == "eqt-patch":
        return session.patch(f"{url}/extendedquerytags/KVP", json={"queryStatus": "Enabled"})
    if route == "eqt-delete":
        return session.delete(f"{url}/extendedquerytags/KVP")
    if route == "export":
        return session.post(f"{url}/export", json={})
    if route.startswith("ups-") and route not in ("ups-search", "ups-retrieve"):
        missing = f"{url}/workitems/1.2.826.0.1.3680043.10.4242.404"
        headers = {"Content-Type": "application/dicom+json", "Accept": "application/dicom+json"}
        state = {"00081195": {"vr": "UI", "Value": ["1.2.3"]}, "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]}}
        method, target, body = {
            "ups-create": ("POST", f"{url}/workitems", []),
            "ups-update": ("POST", missing, {}),
            "ups-state": ("PUT", f"{missing}/state", state),
            "ups-cancel": ("POST", f"{missing}/cancelrequest", {}),
        }[route]
        return session.request(method, target, json=body, headers=headers)
    if route == "bulk-update":
        body = {"studyInstanceUids": [study],
                "changeDataset": {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}}
        return session.post(f"{url}/studies/$bulkUpdate", json=body)
    if route.startswith("delete-"):
        mine = own()
        mine_series = f"{url}/studies/{mine.StudyInstanceUID}/series/{mine.SeriesInstanceUID}"
        target = {"delete-study": f"{url}/studies/{mine.StudyInstanceUID}",
                  "delete-series": mine_series,
                  "delete-instance": f"{mine_series}/instances/{mine.SOPInstanceUID}"}[route]
        return session.delete(target)
    gets = {
        "wado-study": (study_url, MULTIPART_DICOM),
        "wado-series": (series_url, MULTIPART_DICOM),
        "wado-instance": (instance_url, MULTIPART_DICOM),
        "wado-frames": (f"{instance_url}/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=*'),
        "metadata-study": (f"{study_url}/metadata", "application/dicom+json"),
        "metadata-series": (f"{series_url}/metadata", "application/dicom+json"),
        "metadata-instance": (f"{instance_url}/metadata", "application/dicom+json"),
        "rendered-instance": (f"{instance_url}/rendered", "image/jpeg"),
        "rendered-frame": (f"{instance_url}/frames/1/rendered", "image/png"),
        "thumbnail-study": (f"{study_url}/thumbnail", "image/jpeg"),
        "qido-studies": (f"{url}/studies?StudyInstanceUID={study}", "application/dicom+json"),
        "qido-series": (f"{url}/series?SeriesInstanceUID={series}", "application/dicom+json"),
        "qido-instances": (f"{url}/instances?SOPInstanceUID={instance}", "application/dicom+json"),
        "qido-study-series": (f"{study_url}/series", "application/dicom+json"),
        "qido-study-instances": (f"{study_url}/instances", "application/dicom+json"),
        "qido-series-instances": (f"{series_url}/instances", "application/dicom+json"),
        "changefeed": (f"{url}/changefeed?limit=5", "application/json"),
        "changefeed-latest": (f"{url}/changefeed/latest", "application/json"),
        "eqt-list": (f"{url}/extendedquerytags", "application/json"),
        "eqt-errors": (f"{url}/extendedquerytags/KVP/errors", "application/json"),
        "operation-get": (f"{url}/operations/{'0' * 32}", "application/json"),
        "ups-search": (f"{url}/workitems", "application/dicom+json"),
        "ups-retrieve": (f"{url}/workitems/1.2.826.0.1.3680043.10.4242.404", "application/dicom+json"),
    }
    target, accept = gets[route]
    return session.get(target, headers={"Accept": accept})


def vault_call(world, route, session):
    """One key-vault data-plane request of `route` on vault A."""
    w = world
    if route == "key-create":
        return w.vault_call(session, "POST", f"/keys/{w.unique('created')}/create",
                            {"kty": "RSA", "key_size": 2048, "key_ops": ["wrapKey", "unwrapKey"]})
    if route == "key-get":
        return w.vault_call(session, "GET", "/keys/matrixkey")
    if route == "key-list":
        return w.vault_call(session, "GET", "/keys")
    if route == "key-wrap":
        return w.vault_call(session, "POST", f"/keys/matrixkey/{w.key_version}/wrapkey",
                            {"alg": "RSA-OAEP-256", "value": b64url(os.urandom(32))})
    if route == "key-unwrap":
        return w.vault_call(session, "POST", f"/keys/matrixkey/{w.key_version}/unwrapkey",
                            {"alg": "RSA-OAEP-256", "value": w.wrapped})
    name = w.unique("victim")
    w.create_key(name)
    if route == "key-delete":
        response = w.vault_call(session, "DELETE", f"/keys/{name}")
        if response.status_code >= 400:
            assert w.vault_call(w.vault_admin, "GET", f"/keys/{name}").status_code == 200, "a refused delete deleted"
        return response
    assert route == "key-purge"
    assert w.vault_call(w.vault_admin, "DELETE", f"/keys/{name}").status_code == 200
    response = w.vault_call(session, "DELETE", f"/deletedkeys/{name}")
    if response.status_code >= 400:
        assert w.vault_call(w.vault_admin, "GET", f"/deletedkeys/{name}").status_code == 200, "a refused purge purged"
    return response


def arm_call(world, route, session, principal):
    """One control-plane request of `route` in group A."""
    w, arm = world, world.arm

    def call(method, path, body=None, api_version="2023-06-01-preview"):
        return session.request(method, f"{w.server.base}{path}", params={"api-version": api_version}, json=body)

    def refused_left(path, api_version, response):
        if response.status_code >= 400:
            assert arm.request("GET", path, api_version=api_version).status_code == 200, f"a refused delete removed {path}"
        return response

    kind, verb = route.split("-", 1)
    if kind == "group":
        if verb == "get":
            return call("GET", w.group_a, api_version="2022-09-01")
        if verb == "put":
            # An update keeps the group's location (the bootstrap group is in westus3).
            return call("PUT", w.group_a, {"location": "westus3"}, api_version="2022-09-01")
        # A group of the cell's own, on which this principal holds what it holds on group A.
        name = w.unique("matrixdel")
        arm.put_group(name)
        if principal is not None and principal.name.endswith("-group"):
            role = principal.name.split("-")[1]
            arm.grant(principal.principal_id, arm.group(name), ROLES[role])
        return refused_left(arm.group(name), "2022-09-01", call("DELETE", arm.group(name), api_version="2022-09-01"))
    if kind == "workspace":
        if verb == "get":
            return call("GET", arm.workspace_id())
        name = w.unique("matrixws")
        if verb == "put":
            return call("PUT", arm.workspace_id(name), {"location": "local"})
        arm.ok("PUT", arm.workspace_id(name), {"location": "local"})
        return refused_left(arm.workspace_id(name), "2023-06-01-preview", call("DELETE", arm.workspace_id(name)))
    if kind == "dicomservice":
        if verb == "get":
            return call("GET", w.service_a)
        name = w.unique("matrixsvc")
        service_id = arm.service_id(service=name)
        if verb == "put":
            return call("PUT", service_id, {"location": "local"})
        arm.ok("PUT", service_id, {"location": "local"})
        return refused_left(service_id, "2023-06-01-preview", call("DELETE", service_id))
    if kind == "vault":
        if verb == "get":
            return call("GET", arm.vault_id(), api_version="2022-07-01")
        name = w.unique("matrixv")
        body = {"location": "local", "properties": {
            "tenantId": arm.tenant_id, "sku": {"family": "A", "name": "standard"}, "enableSoftDelete": True,
            "enablePurgeProtection": True, "enableRbacAuthorization": True, "accessPolicies": []}}
        if verb == "put":
            return call("PUT", arm.vault_id(name), body, api_version="2022-07-01")
        arm.put_vault(name)
        return refused_left(arm.vault_id(name), "2022-07-01", call("DELETE", arm.vault_id(name), api_version="2022-07-01"))
    if kind == "identity":
        if verb == "get":
            name = w.unique("matrixid")
            arm.put_identity(name)
            return call("GET", arm.identity_id(name), api_version="2023-01-31")
        name = w.unique("matrixid")
        if verb == "put":
            return call("PUT", arm.identity_id(name), {"location": "local"}, api_version="2023-01-31")
        arm.put_identity(name)
        return refused_left(arm.identity_id(name), "2023-01-31", call("DELETE", arm.identity_id(name), api_version="2023-01-31"))
    if kind == "roleassignment":
        listing = f"{w.group_a}/providers/Microsoft.Authorization/roleAssignments"
        if verb == "list":
            return call("GET", listing, api_version="2022-04-01")
        body = {"properties": {
            "roleDefinitionId": f"{arm.subscription}/providers/Microsoft.Authorization/roleDefinitions/{ROLES['Reader']}",
            "principalId": str(uuid.uuid4()), "principalType": "User"}}
        if verb == "put":
            return call("PUT", f"{listing}/{uuid.uuid4()}", body, api_version="2022-04-01")
        assignment = f"{listing}/{uuid.uuid4()}"
        arm.ok("PUT", assignment, body, api_version="2022-04-01")
        return refused_left(assignment, "2022-04-01", call("DELETE", assignment, api_version="2022-04-01"))
    assert kind == "deployment"
    deployments = f"{w.group_a}/providers/Microsoft.Resources/deployments"
    if verb == "get":
        return call("GET", f"{deployments}/matrixbase", api_version="2022-09-01")
    name = w.unique("matrixdeploy")
    if verb == "put":
        return w.deploy(session, name)
    if verb == "put-identity":
        identity = w.unique("matrixdeployid")
        resource = {"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": "2023-01-31",
                    "name": identity, "location": "local"}
        response = w.deploy(session, name, [resource])
        if response.status_code >= 300:
            return response

        def ended():
            state = arm.get(f"{deployments}/{name}", api_version="2022-09-01")["properties"]["provisioningState"]
            return state if state in ("Succeeded", "Failed", "Canceled") else None

        wait_for(ended, timeout=60, what=f"deployment {name} to end")
        return arm.request("GET", arm.identity_id(identity), api_version="2023-01-31")
    assert w.deploy(arm.session, name).status_code in (200, 201)
    return refused_left(f"{deployments}/{name}", "2022-09-01",
                        call("DELETE", f"{deployments}/{name}", api_version="2022-09-01"))


AUDIENCE = {"dicom": DICOM, "partition": DICOM, "vault": VAULT, "arm": MANAGEMENT}


@pytest.mark.parametrize("family,route,column,scope,expected", list(cells()))
def test_role_matrix(world, family, route, column, scope, expected):
    if column == "anonymous":
        principal, session = None, requests.Session()
    else:
        principals_of = "dicom" if family == "partition" else family
        principal = world.nobody if column == "none" else world.principals[(principals_of, column, scope)]
        session = principal.sessions[AUDIENCE[family]]

    if family == "dicom":
        def own():
            mine = fresh_instance()
            store(world.server, mine, world.url_a)
            return mine
        response = dicom_call(route, session, world.url_a, world.stored, own)
    elif family == "partition":
        def own():
            mine = fresh_instance()
            store(world.server, mine, world.url_p)
            return mine
        if route == "partitions-list":
            response = session.get(f"{world.url_c}/partitions", headers={"Accept": "application/json"})
        else:
            response = dicom_call(route.removeprefix("p-"), session, world.url_p, world.stored_p, own)
    elif family == "vault":
        response = vault_call(world, route, session)
    else:
        response = arm_call(world, route, session, principal)

    assert response.status_code == expected, f"{response.status_code} {response.text[:300]}"
    if expected in (401, 403) and response.content:
        # Refusals say why, in the route family's error body, and never by a lost-key code.
        error = response.json()["error"]
        assert error["code"] != "CustomerManagedKeyAccessLost", error
        assert error["message"], error
        if family in ("dicom", "partition") and route.removeprefix("p-").startswith(("stow", "upsert")):
            # Refused unread, the body is left on the connection: the client is told to close it.
            assert response.headers.get("Connection") == "close", response.headers


# ---- lost key access is told only to callers allowed to make the request ------------------------

WRITE_PREFIXES = ("stow", "upsert", "delete-", "eqt-add", "eqt-patch", "eqt-delete", "export", "ups-create",
                  "ups-update", "ups-state", "ups-cancel", "bulk-update")
READS = [route for route, *_ in DICOM_ROUTES if not route.startswith(WRITE_PREFIXES)]
WRITES = [route for route, *_ in DICOM_ROUTES if route.startswith(WRITE_PREFIXES)]


class LostKey:
    """A second customer-managed-key service in group A, under the seed's key, reached through a
    user-assigned identity whose role on the vault is then removed: its key access is lost."""

    def __init__(self, world: World):
        arm, server = world.arm, world.server
        identity = arm.put_identity("matrixlostid")
        principal_id = identity["properties"]["principalId"]
        arm.grant(principal_id, arm.vault_id())
        self.service_id = arm.service_id(service="matrixlost")
        user_assigned = {"type": "UserAssigned", "userAssignedIdentities": {arm.identity_id("matrixlostid"): {}}}
        created = arm.put_service(self.service_id, key_url_of(arm.get(arm.service_id())), user_assigned)
        assert created.status_code in (200, 201), created.text
        self.url = created.json()["properties"]["serviceUrl"] + "/v2"
        self.stored = fresh_instance()
        store(server, self.stored, self.url)

        self.callers = {"anonymous": requests.Session(), "none": world.nobody.sessions[DICOM]}
        for name, role, scope in (("owner", "DicomDataOwner", self.service_id),
                                  ("reader", "DicomDataReader", self.service_id),
                                  ("owner-of-service-a", "DicomDataOwner", world.service_a),
                                  ("contributor", "Contributor", self.service_id)):
            principal = Principal(world.issuer, arm.tenant_id, f"lost-{name}")
            arm.grant(principal.principal_id, scope, ROLES[role])
            self.callers[name] = principal.sessions[DICOM]

        (assignment,) = arm.assignments_of(principal_id, arm.vault_id())
        arm.ok("DELETE", assignment["id"], api_version="2022-04-01")
        wait_data_plane(server, (500, "CustomerManagedKeyAccessLost"), self.url)


@pytest.fixture(scope="module")
def lost(world):
    return LostKey(world)


def lost_key_expected(caller, route):
    if caller == "anonymous":
        return 401
    if caller == "owner" or (caller == "reader" and route in READS):
        return 500
    return 403


@pytest.mark.parametrize("route", READS + WRITES)
@pytest.mark.parametrize("caller", ["owner", "reader", "anonymous", "none", "owner-of-service-a", "contributor"])
def test_lost_key_access(world, lost, caller, route):
    def own():
        # An instance stored before access was lost: the one the module stored.
        return lost.stored

    response = dicom_call(route, lost.callers[caller], lost.url, lost.stored, own)
    expected = lost_key_expected(caller, route)
    assert response.status_code == expected, f"{response.status_code} {response.text[:300]}"
    error = response.json()["error"]
    if expected == 500:
        assert error["code"] == "CustomerManagedKeyAccessLost", error
    else:
        assert error["code"] != "CustomerManagedKeyAccessLost", error
