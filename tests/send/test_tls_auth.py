"""STARTTLS, implicit TLS and AUTH against a real aiosmtpd server with a self-signed certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from tests.conftest import FIXTURES, free_port
from tests.send.faults import FaultySink


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))
    return context


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"digest" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@pytest.fixture
def starttls_server(certificate) -> Iterator[FaultySink]:
    sink, port = FaultySink(), free_port()
    controller = Controller(sink, hostname="localhost", port=port, tls_context=server_context(certificate),
                            require_starttls=True, authenticator=authenticator, auth_required=True)
    controller.start()
    sink.port = port  # type: ignore[attr-defined]
    yield sink
    controller.stop()


@pytest.fixture
def setup(cli, env, configured, certificate) -> None:
    assert cli("init").code == 0
    cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models")
    cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))
    env(email_backend="smtp", smtp_host="localhost", smtp_ca_file=certificate[0], smtp_timeout_s=30)


def test_starttls_then_auth_delivers(cli, env, setup, starttls_server) -> None:
    env(smtp_port=starttls_server.port, smtp_security="starttls", smtp_username="digest", smtp_password="s3cret")
    result = cli("digest")
    assert result.code == 0, result.err
    assert [r for r, _, _ in starttls_server.received] == ["ada@example.org"]


def test_a_wrong_password_is_reported_and_nothing_is_recorded(cli, env, setup, starttls_server) -> None:
    env(smtp_port=starttls_server.port, smtp_security="starttls", smtp_username="digest", smtp_password="wrong")
    result = cli("digest")
    assert result.code == 1 and "refused the login" in result.err and "NEWSLETTER_SMTP_PASSWORD" in result.err
    assert starttls_server.received == []
    assert "nothing to send" not in result.out  # it stopped before planning anything


def test_an_untrusted_certificate_is_an_error_never_a_downgrade(cli, env, setup, starttls_server) -> None:
    env(smtp_port=starttls_server.port, smtp_security="starttls", smtp_username="digest", smtp_password="s3cret",
        smtp_ca_file="")
    result = cli("digest")
    assert result.code == 1 and "cannot reach SMTP relay" in result.err and "CERTIFICATE_VERIFY_FAILED" in result.err
    assert starttls_server.received == []


def test_implicit_tls_delivers(cli, env, setup, certificate) -> None:
    sink, port = FaultySink(), free_port()
    controller = Controller(sink, hostname="localhost", port=port, ssl_context=server_context(certificate))
    controller.start()
    try:
        env(smtp_port=port, smtp_security="tls")
        result = cli("digest")
        assert result.code == 0, result.err
        assert [r for r, _, _ in sink.received] == ["ada@example.org"]
    finally:
        controller.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_auth_without_tls_is_refused_unless_plaintext_auth_is_allowed(cli, env, setup) -> None:
    tried: list[bytes] = []

    def recording_authenticator(server, session, envelope, mechanism, auth_data):
        tried.append(auth_data.password)
        return authenticator(server, session, envelope, mechanism, auth_data)

    sink, port = FaultySink(), free_port()
    controller = Controller(sink, hostname="localhost", port=port, authenticator=recording_authenticator,
                            auth_required=True, auth_require_tls=False)  # a relay that takes AUTH in clear
    controller.start()
    try:
        env(smtp_port=port, smtp_security="none", smtp_username="digest", smtp_password="s3cret")
        refused = cli("digest")
        assert refused.code == 1
        [line] = refused.err.strip().splitlines()
        assert "NEWSLETTER_SMTP_SECURITY=none would send the password in clear" in line
        assert "NEWSLETTER_SMTP_ALLOW_PLAINTEXT_AUTH=true" in line
        assert tried == [] and sink.sessions == 0, "the relay never saw a connection, let alone the password"

        env(smtp_allow_plaintext_auth="true")  # a relay on a trusted network, said so explicitly
        allowed = cli("digest")
        assert allowed.code == 0, allowed.err
        assert tried and set(tried) == {b"s3cret"} and [r for r, _, _ in sink.received] == ["ada@example.org"]
    finally:
        controller.stop()
