"""Sending released and report mail to Postfix's re-injection smtpd.

``[quarantine] release_smtp`` names it: ``unix:/path`` (an smtpd on a unix
socket, which only local users allowed by the file system can reach — the
least privilege), or ``HOST:PORT`` / ``inet:HOST:PORT`` (TCP; with
``release_user`` and ``release_password_file`` milterd authenticates with
SMTP AUTH, after STARTTLS when the server offers it).  A message is sent from an iterable of pieces, dot-stuffed on the
way, so a large one is never held whole in memory.

Over TCP, ``[quarantine] release_smtp_tls`` chooses how TLS is used, as Postfix's
``smtp_tls_security_level`` does (the target carries it, see :func:`parse_target`):
``may`` (STARTTLS where the server offers it, the certificate not verified;
over loopback only when AUTH is to be sent), ``encrypt`` (STARTTLS required, not verified) or
``verify`` (STARTTLS required, the certificate verified against the system's CAs
or ``release_smtp_tls_ca_file``, and its name against the host of
``release_smtp``).  A required STARTTLS that is not offered, refused or fails
verification raises :class:`TLSRequiredError` before MAIL FROM: nothing is
sent in clear, there is no fallback.  A unix socket never leaves this host: the
configuration refuses ``encrypt`` and ``verify`` there.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import smtplib
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Literal

from .endpoints import connect, split_host_port, unix_path
from .files import read_error, read_regular

#: ``[quarantine] release_smtp_tls``: how a TCP target uses STARTTLS (as Postfix's ``smtp_tls_security_level``).
TLSLevel = Literal["may", "encrypt", "verify"]


@dataclass(frozen=True)
class Target:
    """Where to send: a unix socket path, or a TCP host and port, with its TLS policy.

    *tls* and *ca_file* are ``[quarantine] release_smtp_tls`` and ``release_smtp_tls_ca_file``
    (see the module docstring); a unix socket's are "may" and "".
    """

    path: str = ""
    host: str = ""
    port: int = 0
    tls: TLSLevel = "may"
    ca_file: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"

    @property
    def local(self) -> bool:
        """Whether what is sent cannot leave this host: a unix socket, a loopback address or ``localhost``."""
        if self.path or self.host.lower() == "localhost":  # "localhost." is asked of DNS, not /etc/hosts
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def report_sender(text: str) -> str:
    """The address of ``Name <user@domain>`` or ``user@domain``, a digest's From: (``report_from``, ``digest --from``);
    ValueError for anything else: a line break (it would end the header), no address (``Name <>``, sent as the
    envelope's sender whole), or a second address.
    """
    if len(text.splitlines()) > 1 or _CONTROL.search(text):  # splitlines: every line end the email package takes
        raise ValueError("holds a line break or a control character")
    addresses = email.utils.getaddresses([text])
    if len(addresses) != 1 or "@" not in addresses[0][1].strip("@") or any(c.isspace() or c in "<>,;" for c in addresses[0][1]):
        raise ValueError(f"{text!r}: expected one address, as user@example.org or Name <user@example.org>")
    return addresses[0][1]


def parse_target(text: str, default_port: int = 25, tls: TLSLevel = "may", ca_file: str = "") -> Target:
    """``unix:/path``, ``inet:HOST:PORT``, ``HOST:PORT``, ``[::1]:PORT`` or ``HOST`` → Target; ValueError otherwise.

    *tls* and *ca_file* (``[quarantine] release_smtp_tls`` and ``release_smtp_tls_ca_file``) go with a
    TCP target; a unix socket takes neither (ValueError for "encrypt", "verify" or a CA file): what is
    sent there never leaves this host, and a setting that seemed to protect it would protect nothing.
    """
    if tls not in ("may", "encrypt", "verify"):
        raise ValueError(f"release_smtp_tls: expected \"may\", \"encrypt\" or \"verify\", got {tls!r}")
    if ca_file and tls != "verify":
        raise ValueError(f"release_smtp_tls_ca_file is only used with release_smtp_tls = \"verify\" (it is {tls!r})")
    text = text.strip()
    if text.startswith("unix:"):
        if tls != "may":
            raise ValueError(
                f"release_smtp_tls = {tls!r} applies to a HOST:PORT target; {text!r} is a unix socket, which never "
                f"leaves this host (no TLS there): leave release_smtp_tls = \"may\""
            )
        try:
            return Target(path=unix_path(text))
        except ValueError:
            raise ValueError(f"expected unix:/absolute/path, got {text!r}") from None
    text = text.removeprefix("inet:")
    try:
        host, port = split_host_port(text, default_port)
    except ValueError:
        host = ""
    if not host:
        raise ValueError(f"expected unix:/path or HOST:PORT, got {text!r}")
    return Target(host=host, port=port, tls=tls, ca_file=ca_file)


class UnixSMTP(smtplib.SMTP):
    """smtplib's client over a unix socket (as smtplib.LMTP does for LMTP)."""

    def connect(self, host: str = "localhost", port: int = 0, source_address: Any = None) -> tuple[int, bytes]:
        """Connect to the unix socket at *host* (a path) and read the banner."""
        self.sock = connect(path=host, timeout=self.timeout)
        self.file = None
        code, message = self.getreply()
        return code, message


def open_client(target: Target, helo: str, timeout: float) -> smtplib.SMTP:
    """An SMTP client connected to *target* (banner read)."""
    if target.path:
        return UnixSMTP(target.path, local_hostname=helo, timeout=timeout)
    return smtplib.SMTP(target.host, target.port, local_hostname=helo, timeout=timeout)


def read_password(path: str) -> str:
    """The first line of *path* (the SMTP AUTH password).

    Read with :func:`~milterd.files.read_regular`, so that a FIFO in its
    place cannot hang a release or a notice: OSError when *path* is not a
    readable regular file, ValueError when its name has a NUL or it is not
    UTF-8 (without quoting its bytes: they are the password).
    """
    data = read_regular(Path(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    lines = text.splitlines()
    return lines[0] if lines else ""


#: Bytes of a message kept in memory for further transactions (more in a temporary file), and read back at a time.
SPOOL_IN_MEMORY = 1024 * 1024
SPOOL_PIECE = 64 * 1024

#: A bare LF.  A CR not followed by LF is no line end and is sent as it is: making it one would change
#: the message (split a header line, end the header section early, break a DKIM signature).
_BARE_LF = re.compile(rb"(?<!\r)\n")


def data_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The DATA stream of a message given in pieces: CRLF line ends, leading dots doubled, ``.`` at the end.

    A bare LF becomes CR LF, as does a CR that ends the message (so that the final
    dot starts a line); any other CR is kept as it is.  Pieces may split a line (or
    a CR LF) anywhere.
    """
    at_line_start = True
    carry = b""
    wrote_any = False
    for chunk in chunks:
        data = carry + chunk
        carry = b""
        if data.endswith(b"\r"):
            data, carry = data[:-1], b"\r"  # its LF may start the next piece
        if not data:
            continue
        data = _BARE_LF.sub(b"\r\n", data)
        if at_line_start and data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        at_line_start = data.endswith(b"\r\n")
        wrote_any = True
        yield data
    if carry:
        yield b"\r\n"
        at_line_start, wrote_any = True, True
    yield (b"" if at_line_start or not wrote_any else b"\r\n") + b".\r\n"


@dataclass
class Progress:
    """How far :func:`send` got, for a caller whose send raised.

    ``data_sent`` turns true once the current transaction's final dot was handed
    to the socket: an error after that (the connection lost, a timeout, an
    interrupt while waiting for the server's reply) leaves the outcome unknown
    for its recipients (``in_flight``), since the server may have queued the
    message for them.  Before it, the server kept nothing of that transaction.
    Over several transactions (see :func:`send`) ``delivered`` holds the
    recipients of those the server took (its reply to the final dot),
    ``accepted`` the recipients accepted at RCPT in any of them, and ``refused``
    those refused so far (a 452 until a later transaction accepts them).
    """

    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    data_sent: bool = False
    delivered: dict[str, str] = field(default_factory=dict)
    in_flight: list[str] = field(default_factory=list)


def send(
    target: Target,
    sender: str,
    recipients: list[str],
    message: Iterable[bytes],
    helo: str,
    timeout: float = 60.0,
    auth: tuple[str, str] | None = None,
    progress: Progress | None = None,
    size: int | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Send *message* (pieces) by SMTP; return (delivered, refused), each recipient → the server's reply.

    Recipients refused at RCPT are reported one by one; a refusal at MAIL or
    DATA refuses them all.  Recipients over the server's limit per transaction
    (452 at RCPT) get the message in further transactions, until none is left
    or one accepts none of them (the message, read once, is then kept in a
    temporary file, in memory up to :data:`SPOOL_IN_MEMORY` bytes).
    *size* (the message's bytes, about) is declared at
    MAIL when the server has the SIZE extension (RFC 1870), so that one over its
    limit is refused there, before any of it is read from the store and sent.  Connection errors raise OSError/SMTPException;
    *progress*, when given, then tells whether the message may have gone out.
    If reading *message* fails midway, the connection is dropped without the
    final dot, so the server keeps nothing, and the error is raised.
    """
    progress = progress if progress is not None else Progress()
    delivered = progress.delivered
    refused = progress.refused
    spool: IO[bytes] | None = None
    context = tls_context(target) if _tls_required(target) else None  # a CA file that cannot be used fails before connecting
    client = open_client(target, helo, timeout)
    try:
        client.ehlo_or_helo_if_needed()
        start_tls(client, target, auth is not None, context)
        if auth is not None:
            client.login(*auth)
        options = []
        if client.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")  # the body is not read twice to find out
        utf8 = client.has_extn("smtputf8")
        if utf8 and not (sender + "".join(recipients)).isascii():
            options.append("SMTPUTF8")
        if size is not None and client.has_extn("size"):
            options.append(f"SIZE={size}")
        # An address the server cannot be sent (non-ASCII without SMTPUTF8; undecodable bytes) is refused here,
        # alone: smtplib raised UnicodeEncodeError at its RCPT, which failed the release of every recipient.
        if why := _unsendable(sender, utf8, "the sender's address"):
            refused.update({r: why for r in recipients})
            _quit(client)
            return delivered, refused
        unsendable = {r: why for r in recipients if (why := _unsendable(r, utf8))}
        refused.update(unsendable)
        pending, pieces = [r for r in recipients if r not in unsendable], message
        while pending:
            progress.data_sent, progress.in_flight = False, []
            code, reply = _mail(client, sender, options)
            if code != 250:
                client.rset()
                refused.update({r: _reply(code, reply) for r in pending})
                break
            accepted, deferred = _recipients(client, pending, progress)
            if not accepted:
                client.rset()
                break
            if deferred and spool is None:
                # Another transaction will need the message again: keep a copy of it as it is sent.
                spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
                pieces = _copied(message, spool)
            code, reply = _data(client, pieces, progress)
            for recipient in accepted:
                (delivered if code == 250 else refused)[recipient] = _reply(code, reply)
            progress.data_sent, progress.in_flight = False, []  # answered: its outcome is known
            if code != 250:
                refused.update({r: _reply(code, reply) for r in deferred})
                break
            pending = deferred
            if spool is not None:
                pieces = _replayed(spool)
        _quit(client)
    finally:
        client.close()
        if spool is not None:
            spool.close()
    return delivered, refused


#: How the reply of a recipient refused here, never sent to the server, begins: trying again cannot help.
UNSENDABLE = "not sent: "


#: How the store keeps an address's undecodable 8-bit bytes (``text.storable``: ``\udce9`` for the byte 0xE9):
#: what was received is no longer known, and the escape is no address to send to.
_STORED_ESCAPE = re.compile(r"\\udc[89a-f][0-9a-f]")


def _unsendable(address: str, utf8: bool, what: str = "the address") -> str:
    """Why *address* (*what* names it) cannot be sent in an SMTP command (*utf8*: the server offers SMTPUTF8), or ``""``."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return f"{UNSENDABLE}{what} holds bytes that are not UTF-8"
    if _STORED_ESCAPE.search(address):
        return f"{UNSENDABLE}{what} held bytes that are not UTF-8, which the store keeps escaped: the address as received is not known"
    if any(char in address for char in "\r\n\x00"):
        return f"{UNSENDABLE}{what} holds a line break or a NUL"
    if not utf8 and not address.isascii():
        return f"{UNSENDABLE}{what} is not ASCII, and the server does not offer SMTPUTF8"
    return ""


def _mail(client: smtplib.SMTP, sender: str, options: list[str]) -> tuple[int, bytes]:
    """MAIL FROM:<*sender*> with *options*, as smtplib's ``mail`` sends it but for the address, sent as stored
    (:func:`_command`); SMTPUTF8 among *options* makes the commands UTF-8, as there."""
    if any(option.lower() == "smtputf8" for option in options):
        client.command_encoding = "utf-8"
    return _command(client, "mail", f"FROM:<{sender}>" + "".join(f" {option}" for option in options))


def _command(client: smtplib.SMTP, verb: str, argument: str) -> tuple[int, bytes]:
    """*verb* *argument*, and the server's reply.  The address in *argument* goes as Postfix gave it to the milter:
    smtplib's ``mail`` and ``rcpt`` rewrite it with ``email.utils.parseaddr`` first, which takes a source route
    (``@relay.example:c@example.com``, which RFC 5321 says a server must accept) for the address ``@relay.example``,
    refused, and drops what reads as a comment."""
    client.putcmd(verb, argument)
    return client.getreply()


def _recipients(client: smtplib.SMTP, recipients: list[str], progress: Progress) -> tuple[list[str], list[str]]:
    """RCPT each of *recipients*; return those accepted and those to try again in another transaction.

    A 452 is the server's limit of recipients per transaction (RFC 5321 §4.5.3.1.10, Postfix's
    ``smtpd_recipient_limit``): the recipient is refused only until a later transaction accepts it.
    """
    accepted: list[str] = []
    deferred: list[str] = []
    for recipient in recipients:
        code, reply = _command(client, "rcpt", f"TO:<{recipient}>")
        if code in (250, 251):
            accepted.append(recipient)
            progress.accepted.append(recipient)
            progress.in_flight.append(recipient)
            progress.refused.pop(recipient, None)
        else:
            progress.refused[recipient] = _reply(code, reply)
            if code == 452:
                deferred.append(recipient)
    return accepted, deferred


def _data(client: smtplib.SMTP, pieces: Iterable[bytes], progress: Progress) -> tuple[int, bytes]:
    """Send DATA and the message; return the server's reply (to DATA, when it refused it, or to the final dot)."""
    client.putcmd("data")
    code, reply = client.getreply()
    if code != 354:
        return code, reply
    try:
        for piece in data_lines(pieces):
            client.send(piece)
    except BaseException:
        client.close()  # no final dot: the server discards the partial message
        raise
    progress.data_sent = True
    return client.getreply()


def _copied(pieces: Iterable[bytes], spool: IO[bytes]) -> Iterator[bytes]:
    """*pieces*, each also written to *spool*."""
    for piece in pieces:
        spool.write(piece)
        yield piece


def _replayed(spool: IO[bytes]) -> Iterator[bytes]:
    """The pieces written to *spool*, read back from its start."""
    spool.seek(0)
    while piece := spool.read(SPOOL_PIECE):
        yield piece


class TLSRequiredError(smtplib.SMTPException):
    """``release_smtp_tls`` = "encrypt" or "verify" could not be honoured: no STARTTLS, a failed handshake or
    verification, an unusable CA file.  Raised before MAIL FROM: nothing was sent."""


def _tls_required(target: Target) -> bool:
    return not target.path and target.tls != "may"


def unverified_auth(target: Target) -> str:
    """Why no SMTP AUTH password goes to *target*, a host off loopback, without a verified certificate."""
    return (f"{target}: release_smtp_tls = \"{target.tls}\" does not verify the server's certificate, and the SMTP AUTH "
            "password goes to a host off loopback only with \"verify\" (anyone on the path could pose as the server): nothing was sent")


def start_tls(client: smtplib.SMTP, target: Target, auth: bool, context: ssl.SSLContext | None = None) -> bool:
    """STARTTLS on *client* (EHLO done) as *target*'s policy asks; return whether TLS was started.

    A password (*auth*) goes to a host off loopback only with "verify": else SMTPException before anything is sent,
    since whoever can strip STARTTLS or read clear text can as well answer STARTTLS with a certificate of their own.
    With "may" (and on a unix socket), TLS is started only where the server offers it (over loopback
    only when AUTH is to be sent).  With
    "encrypt" and "verify", STARTTLS must be offered and succeed, and with "verify" the certificate
    must verify: else :class:`TLSRequiredError`, and the caller sends nothing more.
    """
    if auth and not target.local and target.tls != "verify":
        raise smtplib.SMTPException(unverified_auth(target))
    offered = client.has_extn("starttls")
    if not _tls_required(target):
        if not auth and (target.local or not offered):
            return False  # over loopback or a unix socket nothing is on the path to read
        if not offered:
            if not target.local:
                # Anyone on the path could strip STARTTLS from the EHLO reply and read the password.
                raise smtplib.SMTPException(f"{target} offers no STARTTLS: the SMTP AUTH password is sent in clear only over loopback or a unix socket")
            return False
        # Opportunistic, as Postfix's smtp_tls_security_level = may: a host off
        # loopback that offers TLS gets the message (and any password) over it;
        # Postfix with smtpd_tls_auth_only offers AUTH only after it.
        client.starttls(context=_opportunistic_tls())
        client.ehlo()
        return True
    required = f"release_smtp_tls = \"{target.tls}\" requires TLS: nothing was sent"
    if not offered:
        raise TLSRequiredError(f"{target} offers no STARTTLS, and {required}")
    try:
        client.starttls(context=context or tls_context(target))
    except ssl.SSLCertVerificationError as exc:
        raise TLSRequiredError(f"{target}: TLS certificate not verified ({exc.verify_message or exc.reason}), and {required}") from exc
    except ssl.SSLError as exc:
        raise TLSRequiredError(f"{target}: TLS handshake failed ({exc.reason or exc}), and {required}") from exc
    except smtplib.SMTPResponseException as exc:
        raise TLSRequiredError(f"{target} refused STARTTLS ({_reply(exc.smtp_code, exc.smtp_error)}), and {required}") from exc
    client.ehlo()
    return True


def tls_context(target: Target) -> ssl.SSLContext:
    """The TLS context *target*'s policy asks for: no verification ("may", "encrypt"), or ("verify") the
    certificate checked against ``release_smtp_tls_ca_file`` (only it), else the system's CAs, and its
    name against the target's host (smtplib gives the host it connected to as the server name).

    TLSRequiredError when the CA file cannot be read or holds no certificate.
    """
    if target.tls != "verify":
        return _opportunistic_tls()
    if not target.ca_file:
        return ssl.create_default_context()  # CERT_REQUIRED, check_hostname, the system's CAs
    try:
        data = read_regular(Path(target.ca_file))  # not a FIFO that would hang the release
    except (OSError, ValueError) as exc:
        raise TLSRequiredError(f"release_smtp_tls_ca_file: cannot read {target.ca_file}: {read_error(exc)}") from None
    cadata: str | bytes = data.decode("ascii", "replace") if b"-----BEGIN" in data else data  # PEM, else DER
    try:
        return ssl.create_default_context(cadata=cadata)  # these CAs only, as Postfix's smtp_tls_CAfile
    except (ssl.SSLError, ValueError) as exc:
        raise TLSRequiredError(f"release_smtp_tls_ca_file: {target.ca_file} holds no usable CA certificate (PEM or DER): {exc}") from None


def probe(target: Target, timeout: float = 5.0) -> str:
    """The first line of the server's banner (then QUIT); OSError when it does not answer."""
    with connect(target.host, target.port, target.path, timeout) as sock:
        banner = sock.recv(512).decode("ascii", "replace").strip()
        sock.sendall(b"QUIT\r\n")
    return banner.splitlines()[0] if banner else ""


def probe_tls(target: Target, helo: str, timeout: float = 5.0) -> str:
    """What a release to *target* would do before MAIL FROM: banner, EHLO and, as its TLS policy asks,
    STARTTLS (with "verify", the certificate verified); then QUIT.  Returns a description of the TLS
    session ("" without one); raises OSError or SMTPException (TLSRequiredError) as a release would fail."""
    context = tls_context(target) if _tls_required(target) else None
    client = open_client(target, helo, timeout)
    try:
        client.ehlo_or_helo_if_needed()
        started = start_tls(client, target, False, context)
        version = client.sock.version() if isinstance(client.sock, ssl.SSLSocket) else None
        _quit(client)
    finally:
        client.close()
    if not started:
        return ""
    return f"{version or 'TLS'}, certificate {'verified' if target.tls == 'verify' else 'not verified'}"


def _quit(client: smtplib.SMTP) -> None:
    """QUIT: what was sent stands whether or not the server still answers it."""
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        pass


def _opportunistic_tls() -> ssl.SSLContext:
    """A TLS context that encrypts without verifying the certificate (a loopback or local smtpd's is usually self-signed)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _reply(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {' '.join(text.split())}"


def smtp_error(exc: BaseException) -> str:
    """A short description of an SMTP or socket failure."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__
