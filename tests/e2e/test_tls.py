"""hds served on an address other than 127.0.0.1, under the local CA and under an operator's own
certificate: the seed's flow runs (hds calls its vault on that address), dicomweb-client stores
and retrieves an instance, and handshakes pass the strict X.509 checks Python 3.13 makes by
default. Bad operator files stop the start with a message that says what is wrong."""

import datetime
import os
import pathlib
import socket
import ssl
import subprocess
import urllib.parse

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from dicomweb_client.api import DICOMwebClient

from conftest import HDS_BIN, ArmClient, HdsServer, free_port, fresh_instance, key_client

# Any 127.0.0.0/8 address is a loopback address on Linux, without setup.
ADDRESS = "127.0.0.2"


def strict_peer_certificate(host: str, port: int, ca_path: str, server_hostname: str = None) -> dict:
    """The server's certificate after a handshake verified as Python 3.13 verifies by default
    (VERIFY_X509_STRICT: a leaf without an Authority Key Identifier is refused)."""
    context = ssl.create_default_context(cafile=ca_path)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname or host) as tls:
            return tls.getpeercert()


def store_and_retrieve_one_instance(server: HdsServer) -> None:
    """STOW-RS of one instance and WADO-RS of it, with dicomweb-client trusting `server.ca_path`."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override session.verify
    session.verify = server.ca_path
    session.headers["Authorization"] = f"Bearer {server.token()}"
    web = DICOMwebClient(url=server.url, session=session)
    dataset = fresh_instance()
    response = web.store_instances([dataset])
    assert len(response.ReferencedSOPSequence) == 1
    assert "FailedSOPSequence" not in response
    returned = web.retrieve_instance(dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID)
    assert returned.SOPInstanceUID == dataset.SOPInstanceUID
    assert returned.PixelData == dataset.PixelData


def default_vault_uri(server: HdsServer) -> str:
    arm = ArmClient(server)
    arm.session.verify = server.ca_path
    arm.session.trust_env = False
    return arm.get(arm.vault_id(), api_version="2022-07-01")["properties"]["vaultUri"]


def assert_vault_serves(server: HdsServer, issuer_common_name: str) -> None:
    """The default vault is on ADDRESS, passes a strict handshake, and the Azure SDK reads its key."""
    vault_uri = default_vault_uri(server)
    parsed = urllib.parse.urlsplit(vault_uri)
    assert parsed.hostname == ADDRESS, vault_uri
    certificate = strict_peer_certificate(ADDRESS, parsed.port, server.ca_path)
    assert ("IP Address", ADDRESS) in certificate["subjectAltName"]
    assert dict(item[0] for item in certificate["issuer"])["commonName"] == issuer_common_name
    key = key_client(server, vault_uri).get_key("dicom-cmk")
    assert key.key_type == "RSA"


def test_hds_serves_on_another_loopback_address_and_follows_a_new_public_host(tmp_path):
    server = HdsServer(tmp_path / "data", http=False, host=ADDRESS)
    server.args += ["--public-url", server.base]
    # Starting runs the seed's flow, which calls the vault on ADDRESS under hds's certificate.
    server.start()
    try:
        store_and_retrieve_one_instance(server)
        certificate = strict_peer_certificate(ADDRESS, server.port, server.ca_path)
        assert ("IP Address", ADDRESS) in certificate["subjectAltName"]
        assert_vault_serves(server, "hds local CA")
    finally:
        assert server.stop() == 0
    ca_before = pathlib.Path(server.ca_path).read_bytes()

    # The next start under a public host name: the certificate is issued anew for it, by the
    # same CA.
    public_host = "hds-node.test"
    server.args[server.args.index("--public-url") + 1] = f"https://{public_host}:{server.port}"
    server.start()
    try:
        certificate = strict_peer_certificate(ADDRESS, server.port, server.ca_path, server_hostname=public_host)
        assert ("DNS", public_host) in certificate["subjectAltName"]
        assert ("IP Address", ADDRESS) in certificate["subjectAltName"]
    finally:
        assert server.stop() == 0
    assert pathlib.Path(server.ca_path).read_bytes() == ca_before, "the CA stays"


def openssl(*arguments, cwd):
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True)


class OperatorPki:
    """A throwaway CA (`openssl req -x509`) and a server certificate it issues for `names`."""

    CA_NAME = "hds test operator CA"

    def __init__(self, directory: pathlib.Path, names=(f"IP:{ADDRESS}", "DNS:hds-node.test")):
        directory.mkdir(parents=True)
        self.directory = directory
        self.ca = directory / "ca.pem"
        self.ca_key = directory / "ca.key"
        self.certificate = directory / "cert.pem"
        self.key = directory / "key.pem"
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        openssl("req", "-x509", *ec, "-keyout", self.ca_key, "-out", self.ca, "-days", "2",
                "-subj", f"/CN={self.CA_NAME}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign", cwd=directory)
        openssl("req", "-new", *ec, "-keyout", self.key, "-out", "server.csr", "-subj", "/CN=hds", cwd=directory)
        (directory / "server.ext").write_text(
            f"subjectAltName={','.join(names)}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        )
        openssl("x509", "-req", "-in", "server.csr", "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
                "-days", "2", "-extfile", "server.ext", "-out", self.certificate, cwd=directory)
        os.chmod(self.key, 0o600)

    def flags(self, certificate=None, key=None, ca=True):
        flags = ["--tls-cert", str(certificate or self.certificate), "--tls-key", str(key or self.key)]
        return flags + (["--tls-ca", str(self.ca)] if ca else [])

    def expired_certificate(self) -> pathlib.Path:
        """The server certificate's key and names under the same CA, valid until yesterday."""
        issued = x509.load_pem_x509_certificate(self.certificate.read_bytes())
        ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(issued.subject)
            .issuer_name(ca.subject)
            .public_key(issued.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=10))
            .not_valid_after(now - datetime.timedelta(days=1))
        )
        for extension in issued.extensions:
            builder = builder.add_extension(extension.value, extension.critical)
        path = self.directory / "expired.pem"
        path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return path


def test_hds_serves_an_operator_certificate_to_clients_and_to_itself(tmp_path):
    pki = OperatorPki(tmp_path / "pki")
    server = HdsServer(tmp_path / "data", http=False, host=ADDRESS, ca_path=pki.ca)
    server.args += ["--public-url", server.base, *pki.flags()]
    server.start()
    try:
        store_and_retrieve_one_instance(server)
        certificate = strict_peer_certificate(ADDRESS, server.port, str(pki.ca))
        assert dict(item[0] for item in certificate["issuer"])["commonName"] == OperatorPki.CA_NAME
        assert_vault_serves(server, OperatorPki.CA_NAME)
    finally:
        assert server.stop() == 0
    assert pki.key.read_text() not in server.logs()


refusals = []


def refused_start(tmp_path, flags, listen=ADDRESS, public_host=ADDRESS) -> str:
    """Runs `hds up` with `flags`; it must stop with an error. Returns what it printed."""
    port = free_port(listen)
    result = subprocess.run(
        [HDS_BIN, "up", "--data-dir", str(tmp_path / "refused"), "--listen", f"{listen}:{port}",
         "--public-url", f"https://{public_host}:{port}", *flags],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0, result.stdout
    assert "hds is ready" not in result.stdout
    refusals.append(result.stderr)
    return result.stderr


def test_bad_operator_files_stop_the_start_with_a_clear_message(tmp_path):
    pki = OperatorPki(tmp_path / "pki")
    key_text = pki.key.read_text()
    key_body = key_text.splitlines()[1]

    missing = tmp_path / "pki" / "absent.pem"
    message = refused_start(tmp_path, pki.flags(certificate=missing))
    assert str(missing) in message and "No such file" in message, message

    os.chmod(pki.key, 0o644)
    message = refused_start(tmp_path, pki.flags())
    assert "accessible to other users" in message and "chmod 600" in message, message
    os.chmod(pki.key, 0o600)

    other = OperatorPki(tmp_path / "other")
    message = refused_start(tmp_path, pki.flags(key=other.key))
    assert "does not belong to the certificate" in message, message

    message = refused_start(tmp_path, pki.flags(certificate=pki.expired_certificate()))
    assert "expired on" in message, message

    message = refused_start(tmp_path, pki.flags(), public_host="elsewhere.test")
    assert "must name the public URL's host elsewhere.test" in message, message
    assert "does not name this host" in message, message

    message = refused_start(tmp_path, pki.flags(), listen="127.0.0.3", public_host="hds-node.test")
    assert "must name the listen address 127.0.0.3" in message, message

    message = refused_start(tmp_path, pki.flags(ca=False))
    assert "not issued by a CA hds trusts" in message, message

    for message in refusals:
        assert key_body not in message and key_text not in message, "no key material in errors"
