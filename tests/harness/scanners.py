"""Private clamd and spamd instances on loopback, for the scanner tests.

clamd refuses to start without a signature database and freshclam cannot
reach the internet, so :class:`Clamd` writes one: a ``.hdb`` file of
``MD5:SIZE:NAME`` lines for the EICAR test string and for ``clam.exe`` from
Debian's ``clamav-testfiles``, and a ``.ndb`` body signature for EICAR inline
in a text body.  clamd unpacks archives, MIME parts and
encodings itself, so those two hashes catch the samples in their zip, 7z,
tar.gz, base64-mailed… forms too.  Detected names get clamd's
``.UNOFFICIAL`` suffix (``Eicar-Test-Signature.UNOFFICIAL``).

:class:`Spamd` runs Debian's shipped rules (``/usr/share/spamassassin``),
local tests only (``-L``), TELL allowed, Bayes in its own directory.
Both run in the foreground in their own process group and are stopped by pid.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .postfix import free_port, wait_for_port

#: The EICAR anti-virus test string (68 bytes).
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_NAME = "Eicar-Test-Signature"
CLAM_EXE = Path("/usr/share/clamav-testfiles/clam.exe")
CLAM_NAME = "ClamAV-Test-File"
TESTFILES = CLAM_EXE.parent

#: SpamAssassin's test string: a message containing it scores 1000.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class DaemonMissing(RuntimeError):
    """A daemon (or its test data) is not installed: the test using it errors, it is never skipped."""


def require(command: str, package: str) -> None:
    """DaemonMissing naming the Debian *package* when *command* is not installed."""
    if shutil.which(command) is None and not Path("/usr/sbin", command).exists():
        raise DaemonMissing(f"{command} is not installed (Debian package {package}; run .ci/setup)")


def stop_group(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Stop a daemon started with start_new_session=True, and its children: SIGTERM, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Clamd:
    """A private clamd on 127.0.0.1 with a tiny signature database."""

    def __init__(self, root: Path, stream_max: str = "40M") -> None:
        self.root = root
        self.port = free_port()
        self.stream_max = stream_max
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The address for ``[clamav] address``."""
        return f"tcp:127.0.0.1:{self.port}"

    @property
    def unix_address(self) -> str:
        """The same clamd on its unix socket."""
        return f"unix:{self.root / 'clamd.sock'}"

    @property
    def log(self) -> Path:
        return self.root / "clamd.log"

    def write_config(self) -> Path:
        """The database and clamd.conf; returns the configuration file."""
        db = self.root / "db"
        db.mkdir(parents=True, exist_ok=True)
        if not CLAM_EXE.exists():
            raise DaemonMissing(f"{CLAM_EXE}: the Debian package clamav-testfiles is missing (run .ci/setup)")
        data = CLAM_EXE.read_bytes()
        lines = [f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:{EICAR_NAME}", f"{hashlib.md5(data).hexdigest()}:{len(data)}:{CLAM_NAME}"]
        (db / "tests.hdb").write_text("\n".join(lines) + "\n")
        # The hash matches EICAR as a whole file (a zip member, an attachment); a
        # body signature (any file type, any offset) finds it inline in a text body.
        (db / "tests.ndb").write_text(f"{EICAR_NAME}:0:*:{EICAR.hex()}\n")
        conf = self.root / "clamd.conf"
        conf.write_text(
            f"TCPSocket {self.port}\nTCPAddr 127.0.0.1\nForeground yes\nLogFile {self.log}\n"
            f"PidFile {self.root / 'clamd.pid'}\nDatabaseDirectory {db}\nUser root\n"
            f"LocalSocket {self.root / 'clamd.sock'}\nStreamMaxLength {self.stream_max}\nMaxThreads 4\nSelfCheck 0\n"
        )
        return conf

    def start(self, timeout: float = 30.0) -> "Clamd":
        """Start and wait until it answers on its port; DaemonMissing when clamd is not installed."""
        require("clamd", "clamav-daemon")
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.write_config()
        self._out = open(self.root / "clamd.stdout", "ab")
        self.process = subprocess.Popen(["clamd", "-c", str(conf)], stdout=self._out, stderr=self._out, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"clamd exited with {self.process.returncode}: {self.log_tail()}")
            try:
                wait_for_port(self.port, timeout=0.2)
                return self
            except TimeoutError:
                pass
        self.stop()
        raise TimeoutError(f"clamd did not start: {self.log_tail()}")

    def stop(self) -> None:
        """Stop it (quietly, whatever its state)."""
        stop_group(self.process)
        if hasattr(self, "_out"):
            self._out.close()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else "(no log)"


class Spamd:
    """A private spamd on 127.0.0.1 with Debian's rules, local tests only."""

    def __init__(self, root: Path, children: int = 2) -> None:
        self.root = root
        self.port = free_port()
        self.children = children
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The address for ``[spamd] address``."""
        return f"tcp:127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "spamd.log"

    def start(self, timeout: float = 60.0) -> "Spamd":
        """Start and wait until it answers on its port; DaemonMissing when spamd is not installed."""
        require("spamd", "spamd")
        self.root.mkdir(parents=True, exist_ok=True)
        # spamd drops to its user: its home (Bayes) must be reachable by it, and
        # pytest's temporary directories are not (0700, root).
        user = "debian-spamd"
        home = self.home = Path(tempfile.mkdtemp(prefix="milterd-spamd-"))
        (home / "bayes").mkdir()
        for path in (home, home / "bayes"):
            shutil.chown(path, user, user)
        command = [
            "spamd", "-L", "-x", "--allow-tell",
            f"--listen=127.0.0.1:{self.port}", "-r", str(self.root / "spamd.pid"), "-s", str(self.log),
            f"--max-children={self.children}", "--min-children=1", "-u", user, "-H", str(home),
            f"--cf=bayes_path {home / 'bayes' / 'bayes'}", "--cf=bayes_auto_learn 0",
        ]
        self._out = open(self.root / "spamd.stdout", "ab")
        self.process = subprocess.Popen(command, stdout=self._out, stderr=self._out, start_new_session=True, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"spamd exited with {self.process.returncode}: {self.log_tail()}")
            try:
                wait_for_port(self.port, timeout=0.2)
                return self
            except TimeoutError:
                pass
        self.stop()
        raise TimeoutError(f"spamd did not start: {self.log_tail()}")

    def stop(self) -> None:
        """Stop it and its children."""
        stop_group(self.process)
        if hasattr(self, "home"):
            shutil.rmtree(self.home, ignore_errors=True)
        if hasattr(self, "_out"):
            self._out.close()

    def log_tail(self, lines: int = 20) -> str:
        for path in (self.log, self.root / "spamd.stdout"):
            if path.exists() and path.stat().st_size:
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"
