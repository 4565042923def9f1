"""``[quarantine] release_smtp_tls``: how released mail, digests and notices use TLS towards a TCP
``release_smtp``, as Postfix's ``smtp_tls_security_level``: "may" (as before: STARTTLS only for AUTH,
never verified), "encrypt" (STARTTLS required) or "verify" (STARTTLS required and the certificate
verified against the system's CAs or ``release_smtp_tls_ca_file``, for release_smtp's host).  A TLS
that is required and cannot be had fails before MAIL FROM: nothing is sent in clear, no fallback.

The servers are aiosmtpd on 127.0.0.1 with certificates made here by a throwaway CA
(:func:`make_ca`, :func:`make_cert`); the integration test reuses these helpers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd import reinject
from milterd.config import Config, ConfigError
from milterd.reinject import Target, parse_target
from tests.harness.postfix import free_port
from tests.harness.smtpserver import ScriptedServer

MESSAGE = b"Subject: released\r\n\r\nconfidential body\r\n"


# --- certificates ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Issued:
    """A private key and its certificate, as PEM."""

    key: bytes
    cert: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write NAME-key.pem and NAME-cert.pem in *directory*; return (key, cert) paths."""
        key, cert = directory / f"{name}-key.pem", directory / f"{name}-cert.pem"
        key.write_bytes(self.key)
        key.chmod(0o600)
        cert.write_bytes(self.cert)
        return key, cert


def _issue(subject_cn: str, issuer: tuple[Any, Any] | None, names: tuple[str, ...], ips: tuple[str, ...], ca: bool) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    issuer_key, issuer_cert = issuer if issuer else (key, None)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True,
        )
    else:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return key, builder.sign(issuer_key, hashes.SHA256())


def _pem(key: Any, cert: Any) -> Issued:
    from cryptography.hazmat.primitives import serialization

    return Issued(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        cert.public_bytes(serialization.Encoding.PEM),
    )


@dataclass
class ThrowawayCA:
    """A throwaway certificate authority."""

    name: str = "milterd test CA"
    _pair: tuple[Any, Any] = field(init=False)

    def __post_init__(self) -> None:
        self._pair = _issue(self.name, None, (), (), ca=True)

    @property
    def pem(self) -> bytes:
        return _pem(*self._pair).cert

    def issue(self, names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> Issued:
        """A server certificate for *names* and *ips*, signed by this CA."""
        return _pem(*_issue(names[0] if names else ips[0], self._pair, names, ips, ca=False))


def make_ca(name: str = "milterd test CA") -> ThrowawayCA:
    return ThrowawayCA(name)


def self_signed(names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> Issued:
    """A self-signed server certificate (no CA vouches for it)."""
    return _pem(*_issue(names[0], None, names, ips, ca=False))


def server_context(issued: Issued, directory: Path, name: str = "server") -> ssl.SSLContext:
    key, cert = issued.write(directory, name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


# --- servers ---------------------------------------------------------------------------------
@dataclass
class Seen:
    """What a test server was sent: MAIL FROM addresses, and each message with whether it came over TLS."""

    mails: list[str] = field(default_factory=list)
    messages: list[tuple[bytes, bool]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)


@pytest.fixture()
def smtp_server() -> Iterator[Any]:
    """``start(tls_context=None)`` → (port, Seen): an aiosmtpd server on 127.0.0.1, STARTTLS offered with a context."""
    from aiosmtpd.controller import Controller

    controllers: list[Any] = []

    def start(tls_context: ssl.SSLContext | None = None) -> tuple[int, Seen]:
        seen = Seen()

        class Handler:
            async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:  # noqa: N802
                seen.mails.append(address)
                envelope.mail_from = address
                envelope.mail_options.extend(options)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                seen.messages.append((envelope.original_content or envelope.content, session.ssl is not None))
                return "250 2.0.0 Ok: queued as TLSTEST"

        port = free_port()
        kwargs: dict[str, Any] = {"tls_context": tls_context, "require_starttls": False} if tls_context else {}
        controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return port, seen

    yield start
    for controller in controllers:
        controller.stop()


def send(target: Target, auth: tuple[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    return reinject.send(target, "alice@example.org", ["bob@example.com"], [MESSAGE], "mx.test", timeout=10, auth=auth)


# --- "verify" ---------------------------------------------------------------------------------
def test_verify_with_the_right_ca_file_sends_over_tls(tmp_path: Path, smtp_server: Any) -> None:
    ca = make_ca()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem)
    port, seen = smtp_server(server_context(ca.issue(), tmp_path))
    for host in ("127.0.0.1", "localhost"):  # the IP address and the DNS name the certificate names
        delivered, refused = send(parse_target(f"{host}:{port}", tls="verify", ca_file=str(ca_file)))
        assert list(delivered) == ["bob@example.com"] and not refused
    assert [tls for _, tls in seen.messages] == [True, True]
    assert seen.messages[0][0].endswith(b"confidential body\r\n")


def test_verify_refuses_a_self_signed_certificate_not_in_the_ca_file(tmp_path: Path, smtp_server: Any) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(make_ca().pem)
    port, seen = smtp_server(server_context(self_signed(), tmp_path))
    with pytest.raises(reinject.TLSRequiredError, match="certificate not verified.*requires TLS: nothing was sent"):
        send(parse_target(f"127.0.0.1:{port}", tls="verify", ca_file=str(ca_file)), auth=("relay", "s3cret"))
    assert seen.mails == [] and seen.messages == []
    # Not with the system's CAs either.
    with pytest.raises(reinject.TLSRequiredError, match="certificate not verified"):
        send(parse_target(f"127.0.0.1:{port}", tls="verify"))
    assert seen.mails == [] and seen.messages == []


def test_verify_checks_the_host_name_of_release_smtp(tmp_path: Path, smtp_server: Any) -> None:
    ca = make_ca()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem)
    port, seen = smtp_server(server_context(ca.issue(names=("mx.example.net",), ips=()), tmp_path))
    with pytest.raises(reinject.TLSRequiredError, match="certificate not verified"):
        send(parse_target(f"127.0.0.1:{port}", tls="verify", ca_file=str(ca_file)))
    assert seen.mails == []


def test_verify_with_an_unusable_ca_file_fails_before_connecting(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("not a certificate\n")
        with pytest.raises(reinject.TLSRequiredError, match="holds no usable CA certificate"):
            send(parse_target(f"127.0.0.1:{port}", tls="verify", ca_file=str(garbage)))
        with pytest.raises(reinject.TLSRequiredError, match="cannot read"):
            send(parse_target(f"127.0.0.1:{port}", tls="verify", ca_file=str(tmp_path / "missing.pem")))
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # no connection was even opened
    finally:
        listener.close()


# --- "encrypt" --------------------------------------------------------------------------------
def test_encrypt_fails_against_a_server_without_starttls(smtp_server: Any) -> None:
    port, seen = smtp_server()
    for auth in (None, ("relay", "s3cret")):
        with pytest.raises(reinject.TLSRequiredError, match=r"offers no STARTTLS, and release_smtp_tls = \"encrypt\" requires TLS: nothing was sent"):
            send(parse_target(f"127.0.0.1:{port}", tls="encrypt"), auth=auth)
    assert seen.mails == [] and seen.messages == []


def test_encrypt_takes_an_unverified_certificate(tmp_path: Path, smtp_server: Any) -> None:
    port, seen = smtp_server(server_context(self_signed(names=("elsewhere.example",), ips=()), tmp_path))
    delivered, _ = send(parse_target(f"127.0.0.1:{port}", tls="encrypt"))
    assert list(delivered) == ["bob@example.com"] and [tls for _, tls in seen.messages] == [True]


class RefusesStartTLS(ScriptedServer):
    """Offers STARTTLS in its EHLO reply, then answers it 454; records the commands."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[bytes] = []

    def session(self, connection: socket.socket) -> None:
        with connection.makefile("rb") as reader:
            connection.sendall(b"220 mx.example.net ESMTP\r\n")
            while line := reader.readline():
                self.commands.append(line)
                verb = line[:4].upper()
                if verb == b"EHLO":
                    connection.sendall(b"250-mx.example.net\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
                elif verb == b"STAR":
                    connection.sendall(b"454 4.7.0 TLS not available due to local problem\r\n")
                elif verb == b"QUIT":
                    connection.sendall(b"221 bye\r\n")
                    return
                else:
                    connection.sendall(b"250 ok\r\n")


def test_a_refused_starttls_is_no_fallback_to_clear_text() -> None:
    server = RefusesStartTLS().start()
    try:
        with pytest.raises(reinject.TLSRequiredError, match="refused STARTTLS \\(454 4.7.0 TLS not available"):
            send(parse_target(f"127.0.0.1:{server.port}", tls="verify"))
    finally:
        server.stop()
    assert not [c for c in server.commands if c[:4].upper() in (b"MAIL", b"RCPT", b"DATA", b"AUTH")]


# --- "may", as before --------------------------------------------------------------------------
def test_may_is_the_default() -> None:
    assert Config().quarantine.release_smtp_tls == "may" and parse_target("127.0.0.1:25").tls == "may"


def test_may_sends_as_before(tmp_path: Path, smtp_server: Any) -> None:
    plain_port, plain = smtp_server()
    tls_port, tls = smtp_server(server_context(self_signed(), tmp_path))
    # Without AUTH: sent as it always was (no STARTTLS), whatever the server offers.
    assert list(send(parse_target(f"127.0.0.1:{plain_port}"))[0]) == ["bob@example.com"]
    assert list(send(parse_target(f"127.0.0.1:{tls_port}"))[0]) == ["bob@example.com"]
    assert [t for _, t in plain.messages] == [False] and [t for _, t in tls.messages] == [False]


def test_may_starts_tls_off_loopback_without_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_server: Any) -> None:
    # As Postfix's "may": a host off loopback that offers STARTTLS gets the message over TLS, AUTH or not.
    tls_port, tls = smtp_server(server_context(self_signed(), tmp_path))
    plain_port, plain = smtp_server()
    for port in (tls_port, plain_port):
        monkeypatch.setattr(reinject, "open_client", lambda target, helo, timeout, port=port: smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=timeout))
        assert list(send(Target(host="reinject.example.net", port=10027))[0]) == ["bob@example.com"]
    assert [t for _, t in tls.messages] == [True] and [t for _, t in plain.messages] == [False]


def test_may_still_sends_no_password_in_clear_off_loopback(monkeypatch: pytest.MonkeyPatch, smtp_server: Any) -> None:
    port, seen = smtp_server()
    monkeypatch.setattr(reinject, "open_client", lambda target, helo, timeout: smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=timeout))
    with pytest.raises(smtplib.SMTPException, match="the SMTP AUTH password goes to a host off loopback only with \"verify\""):
        send(Target(host="mx.example.net", port=587), auth=("relay", "s3cret"))
    assert seen.mails == []


@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_no_password_over_unverified_tls_off_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_server: Any, level: str) -> None:
    # Found by review: a server off loopback that answered STARTTLS with any certificate got the password
    # (whoever can strip STARTTLS can as well present a certificate of their own).
    port, seen = smtp_server(server_context(self_signed(names=("attacker.invalid",), ips=()), tmp_path))
    monkeypatch.setattr(reinject, "open_client", lambda target, helo, timeout: smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=timeout))
    with pytest.raises(smtplib.SMTPException, match=f"release_smtp_tls = \"{level}\" does not verify the server's certificate.*nothing was sent"):
        send(Target(host="mx.example.net", port=587, tls=level), auth=("relay", "s3cret"))
    assert seen.mails == [] and seen.messages == []
    # Without a password, "may" and "encrypt" still send as they always did.
    assert list(send(Target(host="mx.example.net", port=587, tls=level))[0]) == ["bob@example.com"]


def test_doctor_fails_a_password_towards_another_host_without_verify() -> None:
    from milterd.diagnostics import probe_release_smtp

    for level in ("may", "encrypt"):
        finding = probe_release_smtp(Config().with_changes({
            "quarantine.release_smtp": "reinject.example.net:10027", "quarantine.release_smtp_tls": level, "quarantine.release_user": "milterd",
        }))
        assert finding.status == "fail" and "only with \"verify\"" in finding.detail, finding


# --- the configuration ------------------------------------------------------------------------
def test_a_unix_socket_takes_only_may() -> None:
    config = Config()
    assert config.quarantine.release_smtp.startswith("unix:")
    for level in ("encrypt", "verify"):
        with pytest.raises(ConfigError, match="is a unix socket, which never leaves this host"):
            config.with_changes({"quarantine.release_smtp_tls": level})
        with pytest.raises(ValueError, match="unix socket"):
            parse_target("unix:/var/spool/postfix/public/milterd-reinject", tls=level)


def test_a_ca_file_is_only_taken_with_verify() -> None:
    tcp = {"quarantine.release_smtp": "mx.example.net:10027"}
    with pytest.raises(ConfigError, match="release_smtp_tls_ca_file is only used with release_smtp_tls = \"verify\""):
        Config().with_changes({**tcp, "quarantine.release_smtp_tls": "encrypt", "quarantine.release_smtp_tls_ca_file": "/etc/ssl/ca.pem"})
    config = Config().with_changes({**tcp, "quarantine.release_smtp_tls": "verify", "quarantine.release_smtp_tls_ca_file": "/etc/ssl/ca.pem"})
    section = config.quarantine
    target = parse_target(section.release_smtp, tls=section.release_smtp_tls, ca_file=section.release_smtp_tls_ca_file)
    assert (target.host, target.port, target.tls, target.ca_file) == ("mx.example.net", 10027, "verify", "/etc/ssl/ca.pem")
    with pytest.raises(ConfigError):
        Config().with_changes({**tcp, "quarantine.release_smtp_tls": "secure"})


# --- doctor ------------------------------------------------------------------------------------
def test_doctor_starts_tls_as_a_release_would(tmp_path: Path, smtp_server: Any) -> None:
    from milterd.diagnostics import probe_release_smtp

    ca = make_ca()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem)
    good_port, good = smtp_server(server_context(ca.issue(), tmp_path, "good"))
    bad_port, _ = smtp_server(server_context(self_signed(), tmp_path, "bad"))
    plain_port, _ = smtp_server()

    def doctor(port: int, level: str, ca_path: str = "") -> Any:
        return probe_release_smtp(Config().with_changes({
            "milter.hostname": "mx.test", "quarantine.release_smtp": f"127.0.0.1:{port}",
            "quarantine.release_smtp_tls": level, "quarantine.release_smtp_tls_ca_file": ca_path,
        }))

    ok = doctor(good_port, "verify", str(ca_file))
    assert ok.status == "ok" and "certificate verified" in ok.detail and "TLSv1" in ok.detail, ok
    bad = doctor(bad_port, "verify", str(ca_file))
    assert bad.status == "warn" and "certificate not verified" in bad.detail and "would fail" in bad.detail, bad
    plain = doctor(plain_port, "encrypt")
    assert plain.status == "warn" and "offers no STARTTLS" in plain.detail, plain
    assert doctor(good_port, "may").status == "ok"  # loopback: as before
    assert good.messages == [] and good.mails == []


def test_doctor_warns_of_may_towards_another_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd import diagnostics

    monkeypatch.setattr(diagnostics, "probe", lambda target, timeout: "220 mx.example.net ESMTP")
    finding = diagnostics.probe_release_smtp(Config().with_changes({"quarantine.release_smtp": "192.0.2.25:10027"}))
    assert finding.status == "warn" and "set release_smtp_tls = \"verify\"" in finding.detail, finding
    local = diagnostics.probe_release_smtp(Config().with_changes({"quarantine.release_smtp": "127.0.0.1:10027"}))
    assert local.status == "ok", local


def test_the_tls_refusal_names_its_section_as_every_error_does(tmp_path: Path) -> None:
    """On a7b28d4 the line read "q.conf: quarantine: release_smtp_tls = ..."; errors name the key as [section] key."""
    from milterd.config import ConfigError, load_config

    path = tmp_path / "q.conf"
    path.write_text('[quarantine]\nrelease_smtp_tls = "verify"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "[quarantine] release_smtp_tls" and str(caught.value).startswith(f"{path}: [quarantine] release_smtp_tls: release_smtp_tls = 'verify'")
