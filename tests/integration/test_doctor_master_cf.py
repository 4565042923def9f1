"""``milterd doctor`` reads a private Postfix's master.cf with the real ``postconf -M``/``-P``: the smtpd behind
``[quarantine] release_smtp`` still calling milters, a receiving smtpd overridden to ``milter_default_action=accept``,
a chrooted one naming milterd's unix socket by a path outside the queue directory.

Postfix is not started: doctor only reads its configuration (the ports below are written, never bound).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness import postfix as harness
from tests.harness.milterd import Milterd
from tests.harness.postfix import Postfix

SMTP, REINJECT, RELAY = 36903, 36904, 36901


def _doctor(tmp_path: Path, master_cf: str, monkeypatch: pytest.MonkeyPatch, socket: str, milter: str) -> tuple[int, dict[str, dict[str, str]]]:
    monkeypatch.setattr(harness, "MASTER_CF", master_cf)
    milterd = Milterd(tmp_path / "m", {"quarantine": {"release_smtp": f"127.0.0.1:{REINJECT}"}}, socket=socket)
    postfix = Postfix(tmp_path / "postfix", relay_port=RELAY, milter=milter, smtp_port=SMTP, reinject_port=REINJECT)
    postfix.write_config()
    result = milterd.cli("doctor", "--json", "--postfix-config", str(postfix.etc))
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, {f["name"]: f for f in report["findings"]}


def test_a_release_smtpd_with_milters_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master_cf = harness.MASTER_CF.replace("127.0.0.1:{reinject_port} inet n - n - - smtpd -o smtpd_milters= -o non_smtpd_milters=",
                                          "127.0.0.1:{reinject_port} inet n - n - - smtpd")
    assert master_cf != harness.MASTER_CF
    code, found = _doctor(tmp_path, master_cf, monkeypatch, "inet:127.0.0.1:36902", "inet:127.0.0.1:36902")
    release = found["postfix release_smtp service"]
    assert code == 1 and release["status"] == "fail", found
    assert f"127.0.0.1:{REINJECT}/inet" in release["detail"] and "quarantine it again" in release["detail"]
    assert found["postfix smtpd_milters"]["status"] == "ok"


def test_a_milter_less_release_smtpd_is_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, found = _doctor(tmp_path, harness.MASTER_CF, monkeypatch, "inet:127.0.0.1:36902", "inet:127.0.0.1:36902")
    assert found["postfix release_smtp service"]["status"] == "ok", found


def test_receiving_smtpd_overrides_and_chroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    receiving = "127.0.0.1:{smtp_port} inet n - n - - smtpd"
    master_cf = harness.MASTER_CF.replace(receiving, receiving.replace(" n - - smtpd", " y - - smtpd")
                                          + "\n127.0.0.1:36905 inet n - n - - smtpd -o milter_default_action=accept")
    socket = f"unix:{tmp_path}/m/milterd.sock"  # outside Postfix's queue directory
    code, found = _doctor(tmp_path, master_cf, monkeypatch, socket, socket)
    assert code == 1
    chroot = found[f"postfix 127.0.0.1:{SMTP}/inet chroot"]
    assert chroot["status"] == "fail" and f"{tmp_path}/postfix/queue{tmp_path}/m/milterd.sock" in chroot["detail"], chroot
    accept = found["postfix 127.0.0.1:36905/inet milter_default_action"]
    assert accept["status"] == "fail" and "-o milter_default_action=accept" in accept["detail"], accept
    assert found["postfix release_smtp service"]["status"] == "ok"
