"""Review 15, ``milterd learn``'s inputs: bounded reads, a MemoryError for one message, mbox splitting."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from milterd.cli import main
from milterd.commands import learn as learn_command
from milterd.config import load_config
from milterd.milter import offline
from milterd.milter.offline import sources

MSG = b"From: a@example.org\nSubject: hello there\nMessage-ID: <%d@x>\n\nbody words here %d\n"
FROM_LINE = b"From a@example.org Mon Jan  1 00:00:00 2024\n"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[rules]\ndir = ""\n')
    assert main(["db", "upgrade", "-c", str(path)]) == 0
    return path


def learn(conf: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    status = main(["learn", "-c", str(conf), "--json", *args])
    return status, json.loads(capsys.readouterr().out)


# --- 1. reading bounded; a MemoryError is one message's ----------------------------------
def test_only_the_start_of_a_large_message_or_mbox_message_is_read(conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learn_command, "MAX_DIGEST_READ", 64 * 1024)
    config = load_config(conf)  # loaded beforehand: loading it allocates 16 MB for a moment
    monkeypatch.setattr(learn_command, "load_config", lambda path: config)
    big = b"x" * 79 + b"\n"
    (tmp_path / "one.eml").write_bytes(MSG % (1, 1) + big * 100_000)  # 8 MB
    (tmp_path / "two.mbox").write_bytes(b"".join(FROM_LINE + MSG % (n, n) + big * 100_000 + b"\n" for n in (2, 3)))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        status, out = learn(conf, capsys, "--spam", str(tmp_path / "one.eml"), str(tmp_path / "two.mbox"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 0 and out["learned"] == 3
    assert peak < 4 * 1024 * 1024  # each 8 MB message was read whole before


def test_a_message_too_large_for_memory_is_unreadable_and_the_run_goes_on(conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.eml").write_bytes(MSG % (1, 1))
    (tmp_path / "huge.eml").write_bytes(MSG % (2, 2))
    (tmp_path / "c.eml").write_bytes(MSG % (3, 3))
    real = offline._read

    def read(path: Path, *args: Any) -> bytes:
        if path.name == "huge.eml":
            raise MemoryError
        return real(path, *args)

    monkeypatch.setattr(offline, "_read", read)
    status, out = learn(conf, capsys, "--spam", str(tmp_path))
    assert (status, out["learned"], out["unreadable"]) == (1, 2, 1)
    assert out["errors"] == [f"{tmp_path / 'huge.eml'}: not enough memory to read it"]


def test_check_still_reads_a_message_whole(tmp_path: Path) -> None:
    path = tmp_path / "one.eml"
    path.write_bytes(MSG % (1, 1) + b"y" * 100 + b"\n")
    mbox = tmp_path / "two.mbox"
    mbox.write_bytes(FROM_LINE + MSG % (2, 2) + b"\n" + FROM_LINE + MSG % (3, 3))
    [ref] = sources(path)
    assert ref.load() == path.read_bytes() and ref.start(10) == path.read_bytes()[:10]
    first, second = sources(mbox)
    assert (first.load(), second.load()) == (MSG % (2, 2), MSG % (3, 3))
    assert first.start(5) == (MSG % (2, 2))[:5] and second.start(10**9) == MSG % (3, 3)


# --- 3. an mbox is split at its From_ separators only --------------------------------------
def test_a_single_message_with_a_from_line_in_its_body_is_one_message(conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "one.eml"
    path.write_bytes(FROM_LINE + MSG % (1, 1) + b"From the desk of the CEO: buy now\nthanks\n")
    status, out = learn(conf, capsys, "--spam", str(path))
    assert (status, out["messages"], out["learned"], out["unreadable"]) == (0, 1, 1, 0)
    [ref] = sources(path)
    assert ref.load() == path.read_bytes()


def test_an_mbox_is_split_after_blank_lines_only_and_may_start_with_blank_lines(conf: Path, tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lead.mbox"
    second = MSG % (2, 2) + b">From quoted stays quoted\nFrom unquoted, not after a blank line\n"
    path.write_bytes(b"\n" + FROM_LINE + MSG % (1, 1) + b"\n" + FROM_LINE + second + b"\n" + FROM_LINE + MSG % (3, 3))
    assert [ref.load() for ref in sources(path)] == [MSG % (1, 1), second, MSG % (3, 3)]
    status, out = learn(conf, capsys, "--spam", str(path))
    assert (status, out["messages"], out["learned"]) == (0, 3, 3)


def test_crlf_mbox_and_a_long_from_line_are_split_as_before(tmp_path: Path) -> None:
    path = tmp_path / "crlf.mbox"
    long_from = b"From a@b Mon Jan  1 00:00:00 2024 " + b"z" * 200_000 + b"\r\n"  # dated: a separator after the first
    messages = [(MSG % (n, n)).replace(b"\n", b"\r\n") + b"\r\n" for n in range(3)]
    path.write_bytes(b"".join(long_from + message for message in messages))
    assert [ref.load() for ref in sources(path)] == messages  # a CRLF blank line stays, as mailbox.mbox left it


def test_an_mbox_gone_after_it_was_listed_is_reported_per_message(conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spam.mbox"
    path.write_bytes(FROM_LINE + MSG % (1, 1) + b"\n" + FROM_LINE + MSG % (2, 2))
    real = offline._mbox_messages

    def deleted(found: Path) -> list[tuple[int, int]]:
        messages = real(found)
        found.unlink()
        return messages

    monkeypatch.setattr(offline, "_mbox_messages", deleted)
    capsys.readouterr()
    assert main(["learn", "-c", str(conf), "--ham", str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"milterd: {path}#1: No such file or directory" in err and "Traceback" not in err
    assert out.startswith("0 messages: 2 unreadable")
