"""CORS per DICOM service (`properties.corsConfiguration`, as Azure's DICOM service takes it): a
viewer served from another origin may call the data plane from a browser only when the service
lists its origin; preflights are answered without a token; bad configurations are refused."""

import pytest
import requests

from conftest import ArmClient

VIEWER = "https://viewer.example"


def put_service(arm, name, cors):
    return arm.request("PUT", arm.service_id(service=name),
                       {"location": "local", "properties": {"corsConfiguration": cors}})


def test_listed_origins_get_cors_headers_and_others_do_not(hds):
    arm = ArmClient(hds)
    created = put_service(arm, "corsviewer", {
        "origins": [VIEWER], "headers": ["Authorization", "Content-Type", "Accept"],
        "methods": ["GET", "POST"], "maxAge": 600, "allowCredentials": False,
    })
    assert created.status_code in (200, 201), created.text
    assert created.json()["properties"]["corsConfiguration"]["origins"] == [VIEWER]
    service_url = f"{hds.base}/dicom/default/corsviewer/v2"

    # The browser's preflight: no token, answered with what the service allows.
    preflight = requests.options(f"{service_url}/studies", headers={
        "Origin": VIEWER, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,accept"})
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert preflight.headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in preflight.headers["Vary"]

    # The request itself: authorized as always, with the CORS headers on the answer.
    response = hds.http.get(f"{service_url}/studies", headers={"Origin": VIEWER})
    assert response.status_code in (200, 204), response.text
    assert response.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "Location" in response.headers["Access-Control-Expose-Headers"]
    # CORS is not access control: without a token, still 401 (readable by the viewer).
    anonymous = requests.get(f"{service_url}/studies", headers={"Origin": VIEWER})
    assert anonymous.status_code == 401
    assert anonymous.headers["Access-Control-Allow-Origin"] == VIEWER

    # Another origin, or another service that lists none: no CORS headers at all.
    for origin, url in (("https://evil.example", service_url), ("https://viewer.example.evil", service_url),
                        (VIEWER, hds.url)):
        other = requests.options(f"{url}/studies", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
        assert "Access-Control-Allow-Origin" not in other.headers, (origin, url)
        got = hds.http.get(f"{url}/studies", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in got.headers, (origin, url)

    # An update that removes the origin takes effect at once.
    updated = put_service(arm, "corsviewer", {"origins": []})
    assert updated.status_code == 200, updated.text
    gone = requests.options(f"{service_url}/studies", headers={"Origin": VIEWER, "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in gone.headers


@pytest.mark.parametrize("cors", [
    "everyone",
    {"origins": "https://viewer.example"},
    {"origins": ["https://viewer.example/path"]},
    {"origins": ["javascript:alert(1)"]},
    {"origins": ["ftp://viewer.example"]},
    {"origins": ["https://viewer.example:99999"]},
    {"origins": [f"https://v{index}.example" for index in range(65)]},
    {"origins": ["https://" + "a" * 300 + ".example"]},
    {"origins": [VIEWER], "methods": ["TRACE"]},
    {"origins": [VIEWER], "headers": ["bad header"]},
    {"origins": [VIEWER], "maxAge": 100000},
    {"origins": [VIEWER], "maxAge": -1},
    {"origins": ["*"], "allowCredentials": True},
    {"origins": [VIEWER], "allowCredentials": "yes"},
    {"origins": [7]},
])
def test_bad_cors_configurations_are_refused(hds, cors):
    arm = ArmClient(hds)
    response = put_service(arm, "corsbad", cors)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "InvalidCorsConfiguration"
    assert arm.request("GET", arm.service_id(service="corsbad")).status_code == 404
