"""Real DNS on loopback: rbldnsd serving DNS lists, unbound as the resolver in front.

:class:`LocalDns` starts, in one temporary directory,

* ``rbldnsd`` (UDP) with the zones given as ``{zone: (dataset, text)}``
  (``ip4set``, ``ip6trie``, …, in rbldnsd's file formats), and
* ``unbound`` on a free port, answering the test domains from
  ``local-data`` records, sending the DNS-list zones to rbldnsd through
  ``stub-zone`` entries, and answering NXDOMAIN for everything else (the
  machine has no network: nothing is ever forwarded).

milterd points ``[dns] nameservers`` at ``127.0.0.1:PORT``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

UNBOUND = "/usr/sbin/unbound"
RBLDNSD = "/usr/sbin/rbldnsd"


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that is free now (also checked for TCP, unbound opens both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def wait_for_dns(port: int, name: str = "ns.dns-fixture.test", timeout: float = 10.0) -> None:
    """Wait until a DNS server on *port* answers a query (any answer)."""
    import dns.exception
    import dns.message
    import dns.query

    deadline = time.monotonic() + timeout
    query = dns.message.make_query(name, "A")
    while time.monotonic() < deadline:
        try:
            dns.query.udp(query, "127.0.0.1", port=port, timeout=0.3)
            return
        except (dns.exception.Timeout, OSError):
            time.sleep(0.05)
    raise TimeoutError(f"no DNS answer on 127.0.0.1:{port} after {timeout}s")


class LocalDns:
    """rbldnsd + unbound on loopback (see the module docstring)."""

    def __init__(self, root: Path, local_data: list[str], lists: dict[str, tuple[str, str]], silent: tuple[str, ...] = ()) -> None:
        self.root = root
        #: Zones whose nameserver never answers (a loopback socket nobody reads): a sender's slow DNS.
        self.silent = silent
        self._blackhole: socket.socket | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.local_data = local_data
        self.lists = lists
        self.port = free_udp_port()
        self.rbl_port = free_udp_port()
        self._unbound: subprocess.Popen[bytes] | None = None
        self._rbldnsd_pid: int | None = None

    @property
    def nameserver(self) -> str:
        """What ``[dns] nameservers`` takes to use this resolver."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> "LocalDns":
        """Start both daemons and wait until both answer."""
        try:
            self._start_rbldnsd()
            self._start_unbound()
        except Exception:
            self.stop()
            raise
        return self

    def _start_rbldnsd(self) -> None:
        if not self.lists:
            return
        os.chmod(self.root, 0o755)
        specs = []
        for zone, (dataset, text) in self.lists.items():
            path = self.root / f"{zone}.zone"
            path.write_text(text)
            os.chmod(path, 0o644)
            specs.append(f"{zone}:{dataset}:{path.name}")
        pid_file = self.root / "rbldnsd.pid"
        subprocess.run(
            [RBLDNSD, "-u", "nobody", "-w", str(self.root), "-b", f"127.0.0.1/{self.rbl_port}", "-p", str(pid_file), "-t", "60", *specs],
            check=True, capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._rbldnsd_pid = int(pid_file.read_text().strip())
        wait_for_dns(self.rbl_port, f"x.{next(iter(self.lists))}")

    def _start_unbound(self) -> None:
        lines = [
            "server:",
            f"  interface: 127.0.0.1@{self.port}",
            f"  port: {self.port}",
            "  do-ip6: no",
            "  do-not-query-localhost: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.root}"',
            f'  pidfile: "{self.root / "unbound.pid"}"',
            f'  logfile: "{self.root / "unbound.log"}"',
            "  use-syslog: no",
            "  verbosity: 1",
            "  log-queries: yes",
            '  module-config: "iterator"',
            "  num-threads: 1",
            "  qname-minimisation: no",
            "  access-control: 127.0.0.0/8 allow",
            # No network here: everything not served below is NXDOMAIN at once.
            '  local-zone: "." static',
        ]
        for zone in self.lists:
            lines.append(f'  local-zone: "{zone}." transparent')
        for record in self.local_data:
            if record.startswith("PTR "):
                lines.append(f'  local-data-ptr: "{record[4:]}"')
            else:
                lines.append(f"  local-data: '{record}'")
        for zone in self.lists:
            lines += ["stub-zone:", f'  name: "{zone}."', f"  stub-addr: 127.0.0.1@{self.rbl_port}"]
        if self.silent:
            self._blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._blackhole.bind(("127.0.0.1", 0))
            for zone in self.silent:
                lines.insert(lines.index('  local-zone: "." static') + 1, f'  local-zone: "{zone}." transparent')
                lines += ["stub-zone:", f'  name: "{zone}."', f"  stub-addr: 127.0.0.1@{self._blackhole.getsockname()[1]}"]
        conf = self.root / "unbound.conf"
        conf.write_text("\n".join(lines) + "\n")
        check = subprocess.run(["/usr/sbin/unbound-checkconf", str(conf)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"unbound.conf refused: {check.stdout}{check.stderr}")
        self._unbound = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_dns(self.port)

    def stop_resolver(self) -> None:
        """Stop unbound only (the resolver is down; rbldnsd keeps running)."""
        if self._unbound is not None and self._unbound.poll() is None:
            self._unbound.terminate()
            try:
                self._unbound.wait(10)
            except subprocess.TimeoutExpired:
                self._unbound.kill()
                self._unbound.wait()

    def stop(self) -> None:
        """Stop both daemons (quietly, whatever their state)."""
        self.stop_resolver()
        if self._rbldnsd_pid is not None:
            try:
                os.kill(self._rbldnsd_pid, signal.SIGTERM)
            except OSError:
                pass
            self._rbldnsd_pid = None
        if self._blackhole is not None:
            self._blackhole.close()
            self._blackhole = None

    def log(self) -> str:
        """unbound's log (queries included)."""
        path = self.root / "unbound.log"
        return path.read_text(errors="replace") if path.exists() else ""
