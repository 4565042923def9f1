"""A private Postfix instance on loopback, with a sink behind it.

Everything lives in one temporary directory: ``etc/`` (main.cf, master.cf),
``queue/``, ``data/`` and ``maillog``.  Postfix listens on ``smtp_port``
(milters as configured), ``reinject_port`` and ``reinject_socket`` (a unix
socket in ``queue/public``, as the README's master.cf has it; no milter: where quarantine
releases go), and relays every message to ``relay_port`` (a :class:`Sink` or
``smtp-sink``).  Tests use XCLIENT (allowed from 127.0.0.0/8) to play any
client address and HELO name.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MASTER_CF = """\
127.0.0.1:{smtp_port} inet n - n - - smtpd
127.0.0.1:{reinject_port} inet n - n - - smtpd -o smtpd_milters= -o non_smtpd_milters=
milterd-reinject unix n - n - - smtpd -o syslog_name=postfix/milterd-reinject -o smtpd_milters= -o non_smtpd_milters= -o smtpd_authorized_xclient_hosts= -o smtpd_client_restrictions=permit_mynetworks,reject -o smtpd_relay_restrictions=permit_mynetworks,reject -o smtpd_recipient_restrictions=permit_mynetworks,reject -o mynetworks=127.0.0.1/32
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts connections on *port*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class Postfix:
    """A private Postfix instance (see the module docstring)."""

    root: Path
    relay_port: int
    milter: str | None = None
    smtp_port: int = field(default_factory=free_port)
    reinject_port: int = field(default_factory=free_port)
    hostname: str = "mx.test"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def reinject_socket(self) -> Path:
        """The unix-socket re-injection smtpd (master.cf ``milterd-reinject unix n …``, i.e. public/milterd-reinject)."""
        return self.root / "queue" / "public" / "milterd-reinject"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def write_config(self) -> None:
        """Write main.cf and master.cf."""
        for sub in ("etc", "queue", "data"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        # pytest makes its temporary directories 0700: Postfix's unprivileged
        # processes must be able to traverse down to data/ and queue/.
        for parent in self.root.resolve().parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o011)
        shutil.chown(self.root / "data", "postfix", "postfix")
        (self.root / "queue" / "pid").mkdir(exist_ok=True)
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(self.root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": "test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            # Open relay on loopback: a reject must be named, and is never reached.
            "smtpd_relay_restrictions": "check_client_access static:OK, reject_unauth_destination",
            "smtpd_recipient_restrictions": "permit",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
            "smtpd_milters": self.milter or "",
            "non_smtpd_milters": "",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "smtpd_recipient_limit": "5000",
            "in_flow_delay": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "message_size_limit": "80000000",
            "header_size_limit": "2048000",
            "biff": "no",
            "delay_warning_time": "0",
            "notify_classes": "",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "default_process_limit": "200",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "lmtp_tls_security_level": "none",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "shlib_directory": "/usr/lib/postfix",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "meta_directory": "/etc/postfix",
        }
        settings.update(self.extra)
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.etc / "master.cf").write_text(MASTER_CF.format(smtp_port=self.smtp_port, reinject_port=self.reinject_port))
        for name in ("dynamicmaps.cf",):
            if Path("/etc/postfix", name).exists():
                shutil.copy(Path("/etc/postfix", name), self.etc / name)

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c ETC ARGS``."""
        return subprocess.run(["postfix", "-c", str(self.etc), *args], capture_output=True, text=True, check=check, timeout=60)

    def postconf(self, *settings: str) -> None:
        """``postconf -e`` on this instance, then reload, and wait until no smtpd started before the reload
        is left: ``postfix reload`` returns at once, and an idle smtpd of the old configuration could
        still take the next connection."""
        subprocess.run(["postconf", "-c", str(self.etc), "-e", *settings], check=True, timeout=30)
        before = self.smtpd_pids()
        self.postfix("reload")
        deadline = time.monotonic() + 30
        while before & self.smtpd_pids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"smtpd processes {sorted(before & self.smtpd_pids())} outlived the reload\n{self.log_tail()}")
            time.sleep(0.05)

    def smtpd_pids(self) -> set[int]:
        """This instance's smtpd processes: those with its MAIL_CONFIG in their environment (which the
        master passes on to its children, import_environment)."""
        marker = f"MAIL_CONFIG={self.etc}".encode()
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() == "smtpd" and marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
            except OSError:
                continue  # gone meanwhile
        return found

    def start(self) -> "Postfix":
        """Write the configuration and start; wait until smtpd answers."""
        self.write_config()
        result = self.postfix("start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed: {result.stderr}\n{self.log_tail()}")
        wait_for_port(self.smtp_port)
        return self

    def stop(self) -> None:
        """Stop the instance (quietly, whatever state it is in)."""
        self.postfix("stop", check=False)
        pid_file = self.root / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, 0)
            except (OSError, ValueError):
                break
            time.sleep(0.1)

    def flush(self) -> None:
        """Ask the queue manager to retry deferred mail now."""
        self.postfix("flush", check=False)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the maillog (for failure messages)."""
        if not self.maillog.exists():
            return "(no maillog)"
        return "\n".join(self.maillog.read_text(errors="replace").splitlines()[-lines:])

    def queue(self) -> list[dict[str, object]]:
        """``postqueue -j``: the messages in the queue (hold queue included)."""
        result = subprocess.run(["postqueue", "-c", str(self.etc), "-j"], capture_output=True, text=True, timeout=30)
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def smtp(self, xclient: dict[str, str] | None = None, port: int | None = None) -> smtplib.SMTP:
        """An SMTP client connected to this instance, after XCLIENT when given."""
        client = smtplib.SMTP("127.0.0.1", port or self.smtp_port, local_hostname="client.test", timeout=120)
        client.ehlo()
        if xclient:
            args = " ".join(f"{k.upper()}={v}" for k, v in xclient.items())
            code, text = client.docmd("XCLIENT", args)
            if code != 220:
                raise RuntimeError(f"XCLIENT refused: {code} {text!r}")
            client.ehlo_resp = None
            helo = xclient.get("HELO") or xclient.get("helo")
            code, _ = client.ehlo(helo or "client.test")
        return client


class SinkMessage:
    """One message the sink received."""

    def __init__(self, sender: str, recipients: list[str], data: bytes) -> None:
        self.sender, self.recipients, self.data = sender, recipients, data

    @property
    def headers(self) -> str:
        """The header section, as text."""
        return self.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")

    def header(self, name: str) -> list[str]:
        """Every value of header *name* (unfolded)."""
        import email

        message = email.message_from_bytes(self.data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        return [" ".join(str(v).split()) for v in message.get_all(name, [])]


class Sink:
    """An SMTP server on loopback that keeps what it receives (aiosmtpd, in a thread)."""

    def __init__(self, port: int | None = None) -> None:
        from aiosmtpd.controller import Controller

        self.port = port or free_port()
        self.messages: list[SinkMessage] = []
        self._lock = threading.Lock()
        self.refuse: dict[str, str] = {}  # recipient → reply, to test partial failures
        sink = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
                if address in sink.refuse:
                    return sink.refuse[address]
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                with sink._lock:
                    sink.messages.append(SinkMessage(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content))
                return "250 2.0.0 Ok: kept"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, data_size_limit=0, decode_data=False)

    def start(self) -> "Sink":
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def wait(self, count: int = 1, timeout: float = 30.0, match: "callable | None" = None) -> list[SinkMessage]:  # type: ignore[valid-type]
        """Wait until *count* messages (matching *match*) have arrived; return them."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [m for m in self.messages if match is None or match(m)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def with_subject(self, subject: str) -> list[SinkMessage]:
        """The messages whose Subject contains *subject*."""
        with self._lock:
            return [m for m in self.messages if any(subject in s for s in m.header("Subject"))]
