"""Rspamd 3.4 for the benchmark: the field's reference for speed, as a milter (issue 15).

Bench-only: Debian's ``rspamd`` package is not in CI's set-up; a row that
needs it is skipped with the command that installs it.  What runs here is
Rspamd's proxy worker in milter mode with ``self_scan = yes`` (it scans in
the proxy itself, no separate normal worker), Debian's stock configuration
and rules (``/etc/rspamd`` read unchanged through ``$CONFDIR``), its
antivirus module on the bench's clamd (whole message, as milterd's
INSTREAM), and DNS to the bench's local resolver (unbound + rbldnsd).  It
gets a private ``rspamd.conf`` (only the proxy worker, on a loopback port),
private ``local.d`` overrides, and private database, run and log
directories.  No Redis: the modules that need it stay off, as on a box
without one.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from tests.harness.postfix import free_port, wait_for_port
from tests.harness.scanners import stop_group

USER = "_rspamd"  # created by Debian's package
INSTALL = "apt-get install rspamd (with a policy-rc.d that exits 101, so that Debian does not start its service)"
STOCK = Path("/etc/rspamd")

# The stock rspamd.conf without the normal, controller and fuzzy workers: in self-scan mode
# the proxy scans, so those would only be idle processes (and ports) beside the measurement.
RSPAMD_CONF = """\
.include "$CONFDIR/common.conf"

options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}

logging {
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    .include "$CONFDIR/logging.inc"
}

worker "rspamd_proxy" {
    bind_socket = "%(bind)s";
    .include "$CONFDIR/worker-proxy.inc"
    .include(try=true; priority=10) "$LOCAL_CONFDIR/override.d/worker-proxy.inc"
}
"""

PROXY = """\
milter = yes;
timeout = 120s;
upstream "local" {
  default = yes;
  self_scan = yes;
}
count = %(workers)d;
"""

# smtp-source connects from 127.0.0.1.  milterd's rows score it (trusted_networks = []); the same
# here: no local networks, and the RBL and SPF modules check loopback clients instead of skipping them.
OPTIONS = """\
dns {
  nameserver = ["%(nameserver)s"];
}
local_addrs = [];
"""

RBL = """\
default_exclude_private_ips = false;
default_exclude_local = false;
"""

SPF = """\
check_local = true;
"""

ANTIVIRUS = """\
clamav {
  type = "clamav";
  servers = "127.0.0.1:%(clamd_port)d";
  symbol = "CLAM_VIRUS";
  action = "reject";
  scan_mime_parts = false;
  log_clean = false;
}
"""


def missing() -> str:
    """Why Rspamd cannot run here ("" when it can)."""
    if not shutil.which("rspamd") and not Path("/usr/bin/rspamd").exists():
        return f"missing rspamd: {INSTALL}"
    if not (STOCK / "rspamd.conf").exists():
        return f"no {STOCK}/rspamd.conf: {INSTALL}"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no user {USER}: {INSTALL}"
    return ""


def start(root: Path, nameserver: str, clamd_port: int, workers: int = 2, socket: str = "inet") -> tuple[str, list[Callable[[], None]], Callable[[], list[int]], Path]:
    """Start Rspamd under *root* on a loopback port or (*socket* "unix") a unix socket; (smtpd_milters spec, stoppers, worker pids, log file)."""
    root.mkdir(parents=True, exist_ok=True)
    local = root / "conf"
    for sub in ("local.d", "override.d"):
        (local / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = root / "sock" / "rspamd.sock"
    bind = f"{path} mode=0666" if socket == "unix" else f"127.0.0.1:{port}"
    (local / "rspamd.conf").write_text(RSPAMD_CONF % {"bind": bind})
    (local / "override.d" / "worker-proxy.inc").write_text(PROXY % {"workers": workers})
    (local / "local.d" / "options.inc").write_text(OPTIONS % {"nameserver": nameserver})
    (local / "local.d" / "antivirus.conf").write_text(ANTIVIRUS % {"clamd_port": clamd_port})
    (local / "local.d" / "rbl.conf").write_text(RBL)
    (local / "local.d" / "spf.conf").write_text(SPF)
    for sub in ("db", "run", "log", "sock"):
        (root / sub).mkdir(exist_ok=True)
        shutil.chown(root / sub, USER, USER)
    variables = {"CONFDIR": str(STOCK), "LOCAL_CONFDIR": str(local), "DBDIR": str(root / "db"), "RUNDIR": str(root / "run"), "LOGDIR": str(root / "log")}
    command = ["rspamd", "-f", "-u", USER, "-g", USER, "-c", str(local / "rspamd.conf")]
    for name, value in variables.items():
        command += ["--var", f"{name}={value}"]
    out = open(root / "rspamd.out", "ab")
    process = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
    stoppers: list[Callable[[], None]] = [lambda: stop_group(process, timeout=20), out.close]
    log = root / "log" / "rspamd.log"
    try:
        if socket == "unix":
            _wait_for_path(path, process, timeout=120)
        else:
            wait_for_port(port, timeout=120)  # the first start compiles the stock regexps (hyperscan)
    except TimeoutError:
        for stop in stoppers:
            stop()
        tail = (root / "rspamd.out").read_text(errors="replace")[-300:] + (log.read_text(errors="replace")[-300:] if log.exists() else "")
        raise RuntimeError(f"rspamd did not start: {tail}") from None

    def pids() -> list[int]:
        """The main process and its workers (CPU is summed over all of them)."""
        out = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout
        return [process.pid, *(int(p) for p in out.split())]

    return (f"unix:{path}" if socket == "unix" else f"inet:127.0.0.1:{port}"), stoppers, pids, log


def _wait_for_path(path: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            raise TimeoutError(f"no {path}")
        time.sleep(0.1)
