"""MIMEDefang 3.3 for the benchmark: the anchors' fastest scanner set-up (4 workers, SpamAssassin in-process).

Bench-only: Debian's ``mimedefang`` package is not in CI's set-up; a row that
needs it is skipped with the command that installs it.  The filter written
here scans with the bench's clamd (``SCAN`` over its unix socket), rejects a
virus, asks SpamAssassin in-process (Debian's rules, local tests only, as the
bench's spamd) and rejects at 15 points like milterd's default, otherwise
adds ``X-Spam-Score``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from tests.harness.scanners import stop_group

USER = "defang"  # created by Debian's package
INSTALL = "apt-get install mimedefang (with a policy-rc.d that exits 101, so that Debian does not start its service)"

FILTER = r"""
$ClamdSock = "%(clamd_sock)s";
$SALocalTestsOnly = 1;

sub filter_begin {
    my($entity) = @_;
    my($code, $category, $action) = message_contains_virus_clamd();
    if ($category eq "virus") {
        return action_bounce("Virus found: $VirusName");
    }
    if ($action eq "tempfail") {
        return action_tempfail("Problem running virus scanner");
    }
}

sub filter {
    my($entity, $fname, $ext, $type) = @_;
    return action_accept();
}

sub filter_end {
    my($entity) = @_;
    return if message_rejected();
    my($hits, $req, $names, $report) = spam_assassin_check();
    if ($hits >= 15) {
        return action_bounce("Message rejected as spam");
    }
    action_change_header("X-Spam-Score", sprintf("%%.1f (%%s)", $hits, $names));
}

1;
"""


def missing() -> str:
    """Why MIMEDefang cannot run here ("" when it can)."""
    for tool in ("mimedefang", "mimedefang-multiplexor", "mimedefang.pl"):
        if not shutil.which(tool):
            return f"missing {tool}: {INSTALL}"
    try:
        import pwd

        pwd.getpwnam(USER)
    except KeyError:
        return f"no user {USER}: {INSTALL}"
    return ""


def start(root: Path, clamd_sock: str, workers: int = 4) -> tuple[str, list[Callable[[], None]]]:
    """Start the multiplexor and the milter under *root*; (smtpd_milters spec, stoppers)."""
    root.mkdir(parents=True, exist_ok=True)
    spool = root / "spool"
    spool.mkdir(exist_ok=True)
    shutil.chown(spool, USER, USER)  # MIMEDefang refuses to run as root
    filter_file = root / "mimedefang-filter"
    filter_file.write_text(FILTER % {"clamd_sock": clamd_sock})
    check = subprocess.run(["mimedefang.pl", "-f", str(filter_file), "-test"], capture_output=True, text=True, timeout=120)
    if check.returncode != 0:
        raise RuntimeError(f"mimedefang filter refused: {(check.stderr or check.stdout).strip()[-300:]}")
    mux_sock, milter_sock = spool / "mux.sock", spool / "mimedefang.sock"
    log = open(root / "mimedefang.log", "ab")
    mux = subprocess.Popen(
        ["mimedefang-multiplexor", "-D", "-U", USER, "-m", str(workers), "-x", str(workers), "-s", str(mux_sock), "-z", str(spool),
         "-F", str(filter_file), "-f", shutil.which("mimedefang.pl") or "mimedefang.pl", "-p", str(spool / "mux.pid"), "-o", str(spool / "mux.lock"),
         "-q", "50", "-Q", "300"],  # queue requests while all workers are busy (otherwise: 451)
        stdout=log, stderr=log, start_new_session=True,
    )
    milter = subprocess.Popen(
        ["mimedefang", "-D", "-U", USER, "-m", str(mux_sock), "-p", f"unix:{milter_sock}", "-z", str(spool), "-P", str(spool / "md.pid"), "-o", str(spool / "md.lock"), "-q"],
        stdout=log, stderr=log, start_new_session=True,
    )
    stoppers: list[Callable[[], None]] = [lambda: stop_group(milter), lambda: stop_group(mux), log.close]
    deadline = time.monotonic() + 30
    while not milter_sock.exists():
        if time.monotonic() > deadline or mux.poll() is not None or milter.poll() is not None:
            for stop in stoppers:
                stop()
            raise RuntimeError(f"MIMEDefang did not start: {(root / 'mimedefang.log').read_text(errors='replace')[-300:]}")
        time.sleep(0.1)
    time.sleep(1.0)  # libmilter may still replace the socket it just made
    os.chmod(milter_sock, 0o666)  # Postfix's smtpd (user postfix) connects; MIMEDefang makes it 0700
    return f"unix:{milter_sock}", stoppers

