"""Start milterd itself, as an administrator would: ``milterd serve -c FILE``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from milterd.confdoc import toml_value
from milterd.milter.supervisor import MAINTENANCE_NAME

from .postfix import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]


#: A loopback port where no DNS server listens: queries fail at once, and none leaves the machine.
NO_RESOLVER = "127.0.0.1:9"
#: The [dns] timeout of a milterd given NO_RESOLVER (unless its test sets one).
NO_RESOLVER_TIMEOUT = 0.3


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a milter.conf with the given sections."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, dict) and section == "checks":
                continue
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
        for key, value in values.items():
            if isinstance(value, dict) and section == "checks":
                lines.append(f"[{section}.{key}]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in value.items())
                lines.append("")
    path.write_text("\n".join(lines))
    return path


def _comm(pid: int) -> str:
    """The process name of *pid* ('' once it has exited)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Milterd:
    """A running ``milterd serve`` with its own milter.conf, database and rules."""

    def __init__(self, root: Path, sections: dict[str, dict[str, Any]] | None = None, rules: dict[str, str] | None = None, socket: str | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.socket = socket or f"inet:127.0.0.1:{self.port}"
        if not self.socket.startswith("unix:"):
            from milterd.endpoints import parse_socket

            self.port = parse_socket(self.socket).port
        sections = {k: dict(v) for k, v in (sections or {}).items()}
        milter = sections.setdefault("milter", {})
        milter.setdefault("socket", self.socket)
        milter.setdefault("workers", 2)
        milter.setdefault("hostname", "mx.test")
        milter.setdefault("trusted_networks", ["127.0.0.1/32"])
        milter.setdefault("shutdown_timeout", 10)
        if os.geteuid() == 0:
            milter.setdefault("user", "root")  # the suite runs as root: keep it knowingly (else serve drops to nobody)
        sections.setdefault("database", {}).setdefault("url", f"sqlite:///{root / 'milterd.sqlite'}")
        # Never the system's resolver (not on loopback): a test that wants answers names its own server.
        # Nothing answers there, so each DNS stage waits out [dns] timeout: kept short for such tests.
        dns = sections.setdefault("dns", {})
        if "nameservers" not in dns:
            dns["nameservers"] = [NO_RESOLVER]
            dns.setdefault("timeout", NO_RESOLVER_TIMEOUT)
        rules_dir = root / "rules"
        rules_dir.mkdir(exist_ok=True)
        for name, text in (rules or {}).items():
            (rules_dir / name).write_text(text)
        sections.setdefault("rules", {}).setdefault("dir", str(rules_dir))
        self.sections = sections
        self.config = write_config(root / "milter.conf", sections)
        self.stderr_path = root / "milterd.stderr"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def postfix_spec(self) -> str:
        """What Postfix's smtpd_milters needs to reach this milterd (Postfix's spelling)."""
        if self.socket.startswith("unix:"):
            return self.socket
        from milterd.endpoints import parse_socket

        return f"inet:{parse_socket(self.socket).host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "Milterd":
        """Start and wait until the socket accepts connections."""
        self._stderr = open(self.stderr_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "milterd", "serve", "-c", str(self.config)],
            stdout=self._stderr, stderr=self._stderr, cwd=self.root, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"milterd exited with {self.process.returncode}:\n{self.stderr()}")
            if self.socket.startswith("unix:"):
                if Path(self.socket[5:]).exists():
                    break
            else:
                try:
                    wait_for_port(self.port, timeout=0.2)
                    break
                except TimeoutError:
                    pass
            time.sleep(0.05)
        else:
            raise TimeoutError(f"milterd did not start:\n{self.stderr()}")
        # The socket listens once the store is checked (as the service account), then the
        # workers start: "listening on" says it is done.
        if self.sections["milter"].get("log_level", "info") in ("debug", "info"):
            while time.monotonic() < deadline and "listening on" not in self.stderr():
                if self.process.poll() is not None:
                    raise RuntimeError(f"milterd exited with {self.process.returncode}:\n{self.stderr()}")
                time.sleep(0.05)
        time.sleep(0.3)  # let the workers reach accept()
        if self.process.poll() is not None:
            raise RuntimeError(f"milterd exited with {self.process.returncode}:\n{self.stderr()}")
        return self

    def stderr(self) -> str:
        """What milterd wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def workers(self) -> list[int]:
        """The pids of the worker processes (the supervisor's children but its maintenance one)."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split() if _comm(int(p)) != MAINTENANCE_NAME]

    def signal(self, sig: int) -> None:
        """Send *sig* to the supervisor."""
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL the group if it does not stop."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._stderr.close()
        return self.process.returncode

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a milterd sub-command against this instance's milter.conf."""
        return subprocess.run([sys.executable, "-m", "milterd", "-c", str(self.config), *args], capture_output=True, text=True, cwd=self.root, check=check, timeout=300)

    def log_json(self, *args: str) -> list[dict[str, Any]]:
        """``milterd log --json`` as Python objects (newest first)."""
        import json

        result = self.cli("log", "--json", "--limit", "0", *args)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return json.loads(result.stdout)
