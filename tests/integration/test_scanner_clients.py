"""The scanner clients and checks against a private clamd and spamd (no Postfix; down and hung scanners: tests/unit/test_scanners_down.py)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterator

import pytest

from milterd.message.model import Action
from milterd.scanners import ScannerError
from milterd.scanners.clamd import ClamdClient
from milterd.scanners.spamd import SpamdClient
from tests.harness.pipeline import HAM, SPAM, run_message, scanner_pipeline
from tests.harness.scanners import CLAM_NAME, EICAR, EICAR_NAME, TESTFILES, Clamd, Spamd


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    daemon = Clamd(tmp_path_factory.mktemp("clamd"), stream_max="1M")
    try:
        yield daemon.start()
    finally:
        daemon.stop()



# --- clamd ------------------------------------------------------------------
def test_clamd_ping_version_scan(clamd: Clamd) -> None:
    client = ClamdClient(clamd.address, timeout=10)
    assert client.ping()
    assert client.version().startswith("ClamAV ")
    assert client.scan(b"nothing to see").status == "OK"
    found = client.scan(EICAR)
    assert found.infected and found.virus.startswith(EICAR_NAME)


def test_clamd_unix_socket(clamd: Clamd) -> None:
    client = ClamdClient(clamd.unix_address, timeout=10)
    assert client.ping()
    assert client.scan([b"Subject: x\r\n\r\n", b"hello\r\n", EICAR, b"\r\n"]).infected


def test_clamd_streams_chunks_as_they_come(clamd: Clamd) -> None:
    client = ClamdClient(clamd.address, timeout=10, chunk_size=7)
    with client.instream() as stream:
        stream.send(b"Subject: test\r\n\r\n")
        for start in range(0, len(EICAR), 10):
            stream.send(EICAR[start : start + 10])
        assert stream.sent == len(b"Subject: test\r\n\r\n") + len(EICAR)
        result = stream.finish()
    assert result.infected and stream.closed


@pytest.mark.parametrize("sample", ["clam.exe", "clam.zip", "clam.7z", "clam.tar.gz", "clam.exe.mbox.base64"])
def test_clamd_testfiles(clamd: Clamd, sample: str) -> None:
    result = ClamdClient(clamd.address, timeout=10).scan((TESTFILES / sample).read_bytes())
    assert result.infected and result.virus.startswith(CLAM_NAME)


def test_clamd_size_limit_is_an_error_with_clamds_words(clamd: Clamd) -> None:
    stream = ClamdClient(clamd.address, timeout=10).instream()
    # clamd says why, then closes. Where its words come depends on the race with our sends:
    # - a send or the end of the stream fails, and the words salvaged from the socket are the error;
    # - under load its reset can overtake the words (a RST discards unread data): "connection lost";
    # - every send fit in the socket's buffers: the words come back as the stream's ERROR verdict.
    # The clamav check takes the words either way (SKIPPED over StreamMaxLength, never clean).
    try:
        for _ in range(64):  # 4 MB against StreamMaxLength 1M
            stream.send(b"x" * 65536)
        result = stream.finish()
    except ScannerError as exc:
        assert re.search("size limit exceeded|connection lost|closed the connection", str(exc)), exc
    else:
        assert result.status == "ERROR" and "size limit exceeded" in result.reply, result
    finally:
        stream.close()


# --- spamd ------------------------------------------------------------------
def test_spamd_ping_and_check(spamd: Spamd) -> None:
    client = SpamdClient(spamd.address, timeout=30)
    assert client.ping()
    spam = client.check(SPAM)
    assert spam.spam and spam.score >= 1000 and "GTUBE" in spam.rules
    ham = client.check(iter([HAM[:20], HAM[20:]]), len(HAM), user="bob")
    assert not ham.spam and ham.score < 5 and "GTUBE" not in ham.rules


def test_spamd_report(spamd: Spamd) -> None:
    result = SpamdClient(spamd.address, timeout=30).check(SPAM, command="REPORT")
    assert "GTUBE" in result.rules and "Content analysis details" in result.report


def test_spamd_tell(spamd: Spamd) -> None:
    client = SpamdClient(spamd.address, timeout=30)
    message = HAM.replace(b"lunch", b"tell test").replace(b"<1@example.org>", b"<tell-test@example.org>")
    assert client.tell(message, "spam") is True
    assert client.tell(message, "spam") is False  # already learned as such
    assert client.tell(message, "ham") is True
    with pytest.raises(ValueError):
        client.tell(message, "maybe")  # type: ignore[arg-type]


# --- the checks, through the pipeline (no milter protocol) ------------------
def test_checks_clean_virus_and_spam(tmp_path: Path, clamd: Clamd, spamd: Spamd) -> None:
    outcome, envelope = run_message(scanner_pipeline(tmp_path, clamd.address, spamd.address), HAM)
    assert outcome.verdict.action == Action.ACCEPT
    assert "SPAMASSASSIN" in outcome.verdict.symbols
    added = {e.name: e.value for e in outcome.edits if e.op == "add"}
    assert added["X-Virus-Status"] == "Clean" and added["X-Virus-Scanned"].startswith("ClamAV")
    assert "scan" not in envelope.check_state("clamav")  # on_abort released the stream

    outcome, _ = run_message(scanner_pipeline(tmp_path, clamd.address, spamd.address), HAM.replace(b"See you", EICAR + b"\r\nSee you"))
    assert outcome.verdict.action == Action.REJECT
    assert str(outcome.reply).startswith("550 5.7.1 Virus found: " + EICAR_NAME)
    assert outcome.verdict.details["CLAMAV_VIRUS"].startswith(EICAR_NAME)

    outcome, _ = run_message(scanner_pipeline(tmp_path, clamd.address, spamd.address), SPAM)
    assert outcome.verdict.symbols["SPAMASSASSIN"] >= 1000
    assert "GTUBE" in outcome.verdict.details["SPAMASSASSIN"].split(",")
    assert outcome.verdict.action == Action.REJECT  # by milterd's thresholds


def test_checks_size_limits(tmp_path: Path, clamd: Clamd, spamd: Spamd) -> None:
    pipeline = scanner_pipeline(tmp_path, clamd.address, spamd.address, clamav__max_size="1K", spamd__max_size="1K")
    big = HAM.replace(b"See you at noon.", b"y" * 5000)
    outcome, _ = run_message(pipeline, big, chunk=512)
    assert {"CLAMAV_SKIPPED_SIZE", "SPAMD_SKIPPED_SIZE"} <= set(outcome.verdict.symbols)
    assert outcome.verdict.action == Action.ACCEPT


def test_clamd_stream_limit_below_max_size_is_a_skip_not_a_tempfail(tmp_path: Path, clamd: Clamd, spamd: Spamd) -> None:
    pipeline = scanner_pipeline(tmp_path, clamd.address, spamd.address, clamav__max_size=5_000_000, spamd__max_size="1K")
    outcome, _ = run_message(pipeline, HAM.replace(b"See you at noon.", b"z" * 2_000_000))  # clamd's StreamMaxLength is 1M
    assert "CLAMAV_SKIPPED_SIZE" in outcome.verdict.symbols
    assert outcome.verdict.action == Action.ACCEPT


def test_virus_quarantine_and_discard(tmp_path: Path, clamd: Clamd, spamd: Spamd) -> None:
    message = HAM.replace(b"See you", EICAR + b"\r\nSee you")
    outcome, _ = run_message(scanner_pipeline(tmp_path, clamd.address, spamd.address, clamav__action="quarantine"), message)
    assert outcome.verdict.action == Action.QUARANTINE
    assert any(e.name == "X-Virus-Status" and e.value.startswith("Infected") for e in outcome.edits)
    outcome, _ = run_message(scanner_pipeline(tmp_path, clamd.address, spamd.address, clamav__action="discard"), message)
    assert outcome.verdict.action == Action.DISCARD


def test_clamd_wait_and_spamd_scan_overlap(tmp_path: Path, clamd: Clamd, spamd: Spamd, caplog: pytest.LogCaptureFixture) -> None:
    """End-of-message latency is about the slower scan, not the sum: the two
    intervals logged by the checks overlap (inspected, not timed)."""
    import base64
    import io
    import zipfile

    # An archive of many members keeps clamd busy after the last chunk (it
    # unpacks at end of stream), while SpamAssassin skips binary parts.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(1000):
            archive.writestr(f"doc{number}.txt", f"document {number}\n" * 20)
    encoded = base64.encodebytes(buffer.getvalue()).replace(b"\n", b"\r\n")
    message = (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: documents\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nThe documents.\r\n'
        b'--b1\r\nContent-Type: application/zip; name="docs.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + encoded + b"--b1--\r\n"
    )
    pipeline = scanner_pipeline(tmp_path, clamd.address, spamd.address, spamd__max_size=1_000_000, clamav__max_size=1_000_000)
    with caplog.at_level(logging.DEBUG, logger="milterd"):
        outcome, _ = run_message(pipeline, message)
    assert "SPAMASSASSIN" in outcome.verdict.symbols and not {"CLAMAV_ERROR", "SPAMD_ERROR"} & set(outcome.verdict.symbols)
    spans = {}
    for record in caplog.records:
        match = re.search(r"(clamav|spamassassin) eom \w+ start=([\d.]+) end=([\d.]+)", record.getMessage())
        if match:
            spans[match.group(1)] = (float(match.group(2)), float(match.group(3)))
    (c_start, c_end), (s_start, s_end) = spans["clamav"], spans["spamassassin"]
    # Both were running at the same time: each started before the other ended.
    assert s_start < c_end and c_start < s_end
    total = max(c_end, s_end) - min(c_start, s_start)
    print(f"clamd wait {1000 * (c_end - c_start):.1f} ms, spamd {1000 * (s_end - s_start):.1f} ms, end of message {1000 * total:.1f} ms")
