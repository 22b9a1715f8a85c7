"""The `hds` client commands against a running hds, as a user would run them."""

import json
import os
import stat
import subprocess

from conftest import HDS_BIN


def run(*args, env=None):
    result = subprocess.run([HDS_BIN, *args], capture_output=True, text=True, env=env, timeout=60)
    return result


def test_get_access_token_from_the_data_dir_and_from_a_login_profile(hds, tmp_path):
    result = run("account", "get-access-token", "--data-dir", str(hds.data_dir),
                 "--resource", "https://dicom.healthcareapis.azure.com", "--endpoint", hds.base)
    assert result.returncode == 0, result.stderr
    token = json.loads(result.stdout)
    assert set(token) >= {"accessToken", "expiresOn", "tenant", "tokenType"}
    assert token["tokenType"] == "Bearer"
    assert token["tenant"] == hds.admin()["tenantId"]
    import requests
    assert requests.get(f"{hds.url}/studies", headers={"Authorization": f"Bearer {token['accessToken']}"}).status_code == 200

    # hds login keeps a 0600 profile; later commands need no flags.
    env = dict(os.environ, HDS_CONFIG_DIR=str(tmp_path / "config"))
    env.pop("HDS_DATA_DIR", None)
    login = run("login", "--data-dir", str(hds.data_dir), "--endpoint", hds.base, env=env)
    assert login.returncode == 0, login.stderr
    profile = tmp_path / "config" / "profile.json"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    again = run("account", "get-access-token", "--resource", "https://management.azure.com", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["accessToken"].count(".") == 2

    # Flags win over the profile: a wrong secret is refused with the token service's reason.
    wrong = run("account", "get-access-token", "--client-secret", "not-the-secret", env=env)
    assert wrong.returncode != 0
    assert "invalid_client" in wrong.stderr


def test_no_credentials_says_what_to_do(tmp_path):
    env = dict(os.environ, HDS_CONFIG_DIR=str(tmp_path / "empty"))
    for variable in ("HDS_DATA_DIR", "HDS_ENDPOINT", "HDS_CLIENT_ID", "HDS_CLIENT_SECRET", "HDS_TENANT_ID"):
        env.pop(variable, None)
    result = run("account", "get-access-token", env=env)
    assert result.returncode != 0
    assert "hds login" in result.stderr
