"""Review 15: settings that would break every message are refused at start; odd scanner answers are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.config import ConfigError, load_config
from milterd.scanners import Address, ScannerError, connect, parse_address
from milterd.scanners.clamd import parse_reply
from milterd.services import build

DB = '[database]\nurl = "sqlite:///{tmp}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(DB.format(tmp=tmp_path) + text)
    return path


# --- defect 3: a scanner timeout of 0 ---
@pytest.mark.parametrize(("section", "value"), [("clamav", "0"), ("spamd", "0"), ("clamav", '"0s"'), ("spamd", "0.0")])
def test_zero_scanner_timeout_is_refused(tmp_path: Path, section: str, value: str) -> None:
    path = write(tmp_path, f"[{section}]\nenabled = true\ntimeout = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert info.value.key == f"[{section}] timeout"
    assert "greater than 0" in info.value.reason


def test_positive_scanner_timeouts_still_load(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[clamav]\ntimeout = 0.25\n[spamd]\ntimeout = 0.5\n"))
    assert (config.clamav.timeout, config.spamd.timeout) == (0.25, 0.5)


# --- defect 4: a host name the idna codec refuses ---
@pytest.mark.parametrize("text", ["tcp:a..b:3310", "tcp:" + "a" * 64 + ".example:3310", "tcp:.example:783"])
def test_bad_host_name_is_refused_by_parse_address(text: str) -> None:
    with pytest.raises(ValueError, match="is not a valid host name: label empty or too long"):
        parse_address(text)


def test_bad_host_name_is_refused_in_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, '[clamav]\naddress = "tcp:a..b:3310"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.key) == (str(path), "[clamav] address")
    assert "not a valid host name" in info.value.reason


@pytest.mark.parametrize("text", ["tcp:127.0.0.1:3310", "tcp:[::1]:783", "tcp:clamd.example.:3310", "tcp:" + "a" * 63 + ".example:1"])
def test_good_addresses_still_parse(text: str) -> None:
    assert parse_address(text).family == "tcp"


def test_connect_turns_a_unicode_error_into_a_scanner_error() -> None:
    # An Address built without parse_address (as a caller may): no UnicodeError escapes.
    with pytest.raises(ScannerError, match="not a valid host name"):
        connect(Address("tcp", host="a..b", port=3310), timeout=1.0)


# --- defect 5: an empty header regex ---
def test_empty_header_regex_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text("[[rule]]\nname = \"X_ONE\"\nheader = \"Subject\"\nregex = ''\n")
    with pytest.raises(ConfigError) as info:
        build(load_config(write(tmp_path, "")))
    assert info.value.file.endswith("local.toml")
    assert info.value.key == "rule X_ONE.regex"
    assert "not empty" in info.value.reason


# --- defect 6: clamd answers without the "stream: " of INSTREAM ---
@pytest.mark.parametrize("reply", [b"OK\x00", b"OK\n", b" OK ", b"1: OK\x00", b"streamOK\x00", b"stream:OK\x00", b"x: stream: OK\x00",
                                   b"Eicar FOUND\x00", b"PONG\x00"])
def test_bare_or_odd_verdicts_are_errors(reply: bytes) -> None:
    result = parse_reply(reply)
    assert result.status == "ERROR" and not result.infected


@pytest.mark.parametrize(("reply", "status", "virus"), [
    (b"stream: OK\x00", "OK", ""),
    (b"12: stream: OK\x00", "OK", ""),
    (b"stream: Eicar-Test-Signature FOUND\x00", "FOUND", "Eicar-Test-Signature"),
    (b"3: stream: Win.Test.EICAR_HDB-1 FOUND\n", "FOUND", "Win.Test.EICAR_HDB-1"),
    (b"INSTREAM size limit exceeded. ERROR\x00", "ERROR", ""),
])
def test_clamd_real_answers(reply: bytes, status: str, virus: str) -> None:
    assert (parse_reply(reply).status, parse_reply(reply).virus) == (status, virus)
