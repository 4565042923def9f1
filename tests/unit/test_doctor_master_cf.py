"""doctor reads master.cf too (review of the fifteenth stack): main.cf alone said OK of setups that lose, defer or
pass mail unscanned.

Pure judgements on ``postconf -M`` and ``postconf -P`` text written here; ``postconf`` is not run
(``subprocess.run`` replaced), the accounts are faked (``pwd``/``grp`` replaced).
"""

from __future__ import annotations

import grp
import pwd
import stat
import subprocess
from typing import Any

import pytest

from milterd import diagnostics
from milterd.config import Config
from milterd.diagnostics import Finding

QUEUE = "/var/spool/postfix"
MAIN = {"smtpd_milters": "inet:127.0.0.1:8895", "non_smtpd_milters": "", "milter_default_action": "tempfail",
        "milter_content_timeout": "300s", "milter_command_timeout": "30s", "milter_protocol": "6", "queue_directory": QUEUE}

# As postconf -M prints master.cf: the receiving smtpd, a release smtpd on TCP and one on a unix socket.
SERVICES = """\
smtp       inet  n       -       y       -       -       smtpd
127.0.0.1:10026 inet n   -       n       -       -       smtpd -o smtpd_milters= -o non_smtpd_milters=
milterd-reinject unix n  -       n       -       -       smtpd -o smtpd_milters= -o non_smtpd_milters=
pickup     unix  n       -       y       60      1       pickup
cleanup    unix  n       -       y       -       0       cleanup
"""
OVERRIDES = """\
127.0.0.1:10026/inet/non_smtpd_milters =
127.0.0.1:10026/inet/smtpd_milters =
milterd-reinject/unix/non_smtpd_milters =
milterd-reinject/unix/smtpd_milters =
"""


def _config(**changes: Any) -> Config:
    return Config().with_changes({"milter.socket": "inet:127.0.0.1:8895", "quarantine.release_smtp": "127.0.0.1:10026", **changes})


def _judge(config: Config, services: str = SERVICES, overrides: str = OVERRIDES, **main: str) -> dict[str, Finding]:
    master = diagnostics.parse_master(services, overrides)
    return {f.name: f for f in diagnostics.judge_postfix(config, {**MAIN, **main}, services=master)}


def test_a_release_smtpd_that_calls_milterd_fails() -> None:
    """release_smtp at an smtpd without -o smtpd_milters=: the release was quarantined again, reported delivered."""
    services = SERVICES.replace("127.0.0.1:10026 inet n   -       n       -       -       smtpd -o smtpd_milters= -o non_smtpd_milters=",
                                "127.0.0.1:10026 inet n   -       n       -       -       smtpd")
    overrides = "\n".join(line for line in OVERRIDES.splitlines() if not line.startswith("127.0.0.1:10026"))
    found = _judge(_config(), services, overrides)
    release = found["postfix release_smtp service"]
    assert release.status == "fail", release
    assert "127.0.0.1:10026/inet" in release.detail and "quarantine it again" in release.detail and "main.cf" in release.detail
    # A main.cf non_smtpd_milters counts too, whatever the smtpd_milters override says.
    only_smtpd = "\n".join(line for line in OVERRIDES.splitlines() if not line.startswith("127.0.0.1:10026/inet/non_smtpd"))
    found = _judge(_config(), overrides=only_smtpd, non_smtpd_milters="inet:127.0.0.1:8895")
    assert found["postfix release_smtp service"].status == "fail"
    assert "non_smtpd_milters" in found["postfix release_smtp service"].detail


def test_a_milter_less_release_smtpd_is_ok_by_port_or_socket() -> None:
    assert _judge(_config())["postfix release_smtp service"].status == "ok"
    assert _judge(_config(**{"quarantine.release_smtp": "localhost:10026"}))["postfix release_smtp service"].status == "ok"
    unix = _config(**{"quarantine.release_smtp": f"unix:{QUEUE}/public/milterd-reinject"})
    found = _judge(unix)["postfix release_smtp service"]
    assert found.status == "ok" and "milterd-reinject/unix" in found.detail
    # The same socket, but the service keeps main.cf's milters: a failure.
    found = _judge(unix, overrides="\n".join(line for line in OVERRIDES.splitlines() if not line.startswith("milterd-reinject")))
    assert found["postfix release_smtp service"].status == "fail"


def test_a_release_target_master_cf_does_not_have_warns() -> None:
    found = _judge(_config(**{"quarantine.release_smtp": "127.0.0.1:10099"}))["postfix release_smtp service"]
    assert found.status == "warn" and "no service of master.cf" in found.detail


def test_a_receiving_service_with_default_action_accept_fails() -> None:
    services = SERVICES.replace("y       -       -       smtpd\n", "n       -       -       smtpd -o milter_default_action=accept\n", 1)
    found = _judge(_config(), services, OVERRIDES + "smtp/inet/milter_default_action = accept\n")
    assert found["postfix milter_default_action"].status == "ok"  # main.cf's
    service = found["postfix smtp/inet milter_default_action"]
    assert service.status == "fail" and "-o milter_default_action=accept" in service.detail, service


def test_a_receiving_service_without_milterd_warns() -> None:
    found = _judge(_config(), overrides=OVERRIDES + "smtp/inet/smtpd_milters =\n")
    assert found["postfix smtpd_milters"].status == "ok"  # main.cf's
    service = found["postfix smtp/inet smtpd_milters"]
    assert service.status == "warn" and "smtp/inet" in service.detail and "not scanned" in service.detail, service
    found = _judge(_config(), overrides=OVERRIDES + "smtp/inet/receive_override_options = no_milters\n")
    assert found["postfix smtp/inet smtpd_milters"].status == "warn"


def test_milterd_set_per_service_only_is_not_missing() -> None:
    """main.cf without milterd, every receiving smtpd with -o smtpd_milters=inet:…: main.cf's warning was wrong."""
    found = _judge(_config(), overrides=OVERRIDES + "smtp/inet/smtpd_milters = inet:127.0.0.1:8895\n", smtpd_milters="")
    assert found["postfix smtpd_milters"].status == "ok" and "smtp/inet" in found["postfix smtpd_milters"].detail


def test_a_chrooted_smtpd_cannot_reach_an_absolute_socket_outside() -> None:
    config = _config(**{"milter.socket": "unix:/run/milterd/milterd.sock"})
    found = _judge(config, smtpd_milters="unix:/run/milterd/milterd.sock")
    chroot = found["postfix smtp/inet chroot"]
    assert chroot.status == "fail" and f"{QUEUE}/run/milterd/milterd.sock" in chroot.detail and "deferred" in chroot.detail, chroot
    assert found["postfix smtpd_milters"].status == "ok"  # main.cf names it: only the chrooted service misses it
    # Not chrooted ("-" is Postfix's default, n): no finding.
    unchrooted = SERVICES.replace("smtp       inet  n       -       y", "smtp       inet  n       -       -")
    assert "postfix smtp/inet chroot" not in _judge(config, unchrooted, smtpd_milters="unix:/run/milterd/milterd.sock")


def test_a_chrooted_smtpd_reaches_a_socket_named_relative_to_the_queue() -> None:
    config = _config(**{"milter.socket": f"unix:{QUEUE}/milterd/milterd.sock"})
    found = _judge(config, smtpd_milters="unix:milterd/milterd.sock")
    assert "postfix smtp/inet chroot" not in found and found["postfix smtpd_milters"].status == "ok"
    assert diagnostics.worst(found.values()) == "ok", found


def test_master_cf_is_read_with_postconf(monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, OVERRIDES if "-Px" in command else SERVICES, "")

    monkeypatch.setattr(diagnostics.shutil, "which", lambda name: "/usr/sbin/postconf")
    monkeypatch.setattr(diagnostics.subprocess, "run", run)
    services, why = diagnostics.read_master("/etc/postfix-x")
    assert why == "" and services is not None
    assert sorted(command[1] for command in commands) == ["-M", "-Px"] and all("/etc/postfix-x" in command for command in commands)
    reinject = next(svc for svc in services if svc.name == "milterd-reinject")
    assert reinject.overrides == {"non_smtpd_milters": "", "smtpd_milters": ""} and reinject.command == "smtpd"
    assert next(svc for svc in services if svc.name == "smtp").chrooted


class _Accounts:
    """postfix (uid 100, group postfix 101, also in group mail 8), root."""

    @staticmethod
    def getpwnam(name: str) -> Any:
        if name != "postfix":
            raise KeyError(name)
        return pwd.struct_passwd(("postfix", "x", 100, 101, "", "/", "/bin/false"))

    @staticmethod
    def getpwuid(uid: int) -> Any:
        return pwd.struct_passwd(({0: "root", 100: "postfix"}[uid], "x", uid, uid, "", "/", "/bin/false"))

    @staticmethod
    def getgrall() -> list[Any]:
        return [grp.struct_group(("mail", "x", 8, ["postfix"])), grp.struct_group(("postfix", "x", 101, []))]

    @staticmethod
    def getgrgid(gid: int) -> Any:
        return grp.struct_group(({0: "root", 8: "mail", 101: "postfix"}[gid], "x", gid, []))


def test_a_socket_postfix_cannot_write_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagnostics, "pwd", _Accounts)
    monkeypatch.setattr(diagnostics, "grp", _Accounts)
    sock = stat.S_IFSOCK
    closed = diagnostics.judge_socket_access("/run/milterd.sock", sock | 0o660, 0, 0, "postfix")
    assert closed is not None and closed.status == "warn" and "root:root mode 0660" in closed.detail, closed
    assert diagnostics.judge_socket_access("/run/milterd.sock", sock | 0o660, 0, 8, "postfix") is None  # a supplementary group
    assert diagnostics.judge_socket_access("/run/milterd.sock", sock | 0o660, 0, 101, "postfix") is None  # its own group
    assert diagnostics.judge_socket_access("/run/milterd.sock", sock | 0o600, 100, 0, "postfix") is None  # its own socket
    assert diagnostics.judge_socket_access("/run/milterd.sock", sock | 0o640, 0, 101, "postfix") is not None  # read is not enough
    assert diagnostics.judge_socket_access("/run/milterd.sock", sock | 0o666, 0, 0, "postfix") is None


def test_a_content_filter_s_return_port_without_milters_is_no_finding() -> None:
    """A third look: amavis's 127.0.0.1:10025 with no_milters (its mail scanned on the way in) under main.cf's
    milter_default_action = accept was a FAIL and a WARN on a correct setup."""
    services = SERVICES + "127.0.0.1:10025 inet n  -       n       -       -       smtpd\n"
    overrides = OVERRIDES + "127.0.0.1:10025/inet/receive_override_options = no_unknown_recipient_checks,no_milters\n"
    config = _config(**{"clamav.enabled": True})  # a scanner that fails closed: main.cf's accept is worth a warning
    found = _judge(config, services, overrides, milter_default_action="accept")
    assert found["postfix milter_default_action"].status == "warn"  # main.cf's, for the ports that call milterd
    assert not [name for name in found if name.startswith("postfix 127.0.0.1:10025/inet")], found
    # The port the world sends to, its milters switched off: still a finding.
    found = _judge(config, services, OVERRIDES + "smtp/inet/receive_override_options = no_milters\n", milter_default_action="accept")
    assert found["postfix smtp/inet smtpd_milters"].status == "warn"


def test_the_chroot_finding_names_the_entrys_own_default_action() -> None:
    # { unix:…, default_action=accept } is what Postfix applies to this milter: mail passes unscanned, not deferred.
    config = _config(**{"milter.socket": "unix:/run/milterd/milterd.sock"})
    found = _judge(config, smtpd_milters="{ unix:/run/milterd/milterd.sock, default_action=accept }")
    chroot = found["postfix smtp/inet chroot"]
    assert "passes unscanned" in chroot.detail and "milter_default_action = accept" in chroot.detail, chroot


# A content filter's return port (review, thirty-eighth session): one that calls milterd judged each message twice,
# the second time from the filter's (trusted) address: the first verdict's headers removed, outside mail DKIM-signed.
AMAVIS = "127.0.0.1:10025 inet n   -       n       -       -       smtpd -o content_filter= -o smtpd_helo_restrictions=\n"
AMAVIS_OVERRIDES = "127.0.0.1:10025/inet/content_filter =\n127.0.0.1:10025/inet/smtpd_helo_restrictions =\n"


def test_a_content_filter_s_return_port_that_calls_milterd_fails() -> None:
    found = _judge(_config(), SERVICES + AMAVIS, OVERRIDES + AMAVIS_OVERRIDES, content_filter="smtp-amavis:[127.0.0.1]:10024")
    finding = found["postfix 127.0.0.1:10025/inet content_filter"]
    assert finding.status == "fail" and "judged twice" in finding.detail and "smtp-amavis:[127.0.0.1]:10024" in finding.detail
    assert "-o smtpd_milters= -o non_smtpd_milters=" in finding.detail


def test_a_return_port_without_milters_or_no_content_filter_is_no_finding() -> None:
    quiet = AMAVIS.replace("smtpd -o content_filter=", "smtpd -o content_filter= -o smtpd_milters= -o non_smtpd_milters=")
    quiet_overrides = AMAVIS_OVERRIDES + "127.0.0.1:10025/inet/smtpd_milters =\n127.0.0.1:10025/inet/non_smtpd_milters =\n"
    found = _judge(_config(), SERVICES + quiet, OVERRIDES + quiet_overrides, content_filter="smtp-amavis:[127.0.0.1]:10024")
    assert not any(name.endswith("content_filter") for name in found)
    found = _judge(_config(), SERVICES + AMAVIS, OVERRIDES + AMAVIS_OVERRIDES)  # no content filter anywhere
    assert not any(name.endswith("content_filter") for name in found)
    # The filter set on the smtp service only (-o content_filter=…): the return port still fails.
    services = SERVICES.replace("smtp       inet  n       -       y       -       -       smtpd",
                                "smtp       inet  n       -       y       -       -       smtpd -o content_filter=smtp-amavis:[127.0.0.1]:10024")
    found = _judge(_config(), services + AMAVIS, OVERRIDES + "smtp/inet/content_filter = smtp-amavis:[127.0.0.1]:10024\n" + AMAVIS_OVERRIDES)
    assert found["postfix 127.0.0.1:10025/inet content_filter"].status == "fail"


def test_a_submission_service_that_skips_the_filter_is_no_return_port() -> None:
    # Fourth look: -o content_filter= on submission (authenticated mail skips amavis) was failed as a return port,
    # with advice that would have stopped milterd there.  A filter's return port listens on loopback.
    submission = "submission inet n       -       y       -       -       smtpd -o content_filter=\n"
    found = _judge(_config(), SERVICES + submission, OVERRIDES + "submission/inet/content_filter =\n",
                   content_filter="smtp-amavis:[127.0.0.1]:10024")
    assert not any(name.endswith("content_filter") for name in found)
