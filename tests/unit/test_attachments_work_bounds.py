"""The work one message's archives cost is bounded, whatever their members' count says.

Three CPU traps: 150 tars in a zip, each carrying a deck of 2,000 empty parts,
made zipfile parse 2,000 directory entries per deck although none of its parts
was listed past the Office documents' budget (23 s of a worker for a 13 MB
message); a zip of 2,000 gzip files forked 2,000 listing children, about 10 ms
each (34 s for three such attachments, past the end-of-message budget: 451 on
every retry); archives each built to take a child's 20 s of CPU had no bound
together.  A zip's directory is now counted by its bytes against a budget of
the whole message's (``Limits.max_directory``), and the listing children by
their CPU, 10 ms at least each (``archive_process_seconds``); past either, the
archive is a limit, held as any other.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import pytest

from milterd.checks.attachments import LIMIT, AttachmentChecks
from milterd.content import archives
from milterd.content.archives import Limits, list_archive
from milterd.message.model import Action, Hit, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of, zipped
from tests.unit.test_attachments_archived_message import tarred
from tests.unit.test_attachments_unjudged import attached, message
from tests.unit.test_input_robustness import many_entries_zip


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The archives handed to each listing child, which is not forked here (unit tests start no process); each child takes a second."""
    forked: list[list[str]] = []

    def no_fork(jobs: list[Any], limits: Limits, budget: Any, listing: archives.Listing) -> None:
        forked.append([job.path for job in jobs])
        budget.child_seconds -= 1.0

    monkeypatch.setattr(archives, "_walk_in_child", no_fork)
    return forked


def room(data: bytes) -> int:
    return archives._zip_directory(io.BytesIO(data))[1]  # noqa: SLF001 - the count the budget takes is the subject


def deck(parts: int) -> bytes:
    return zipped({"[Content_Types].xml": b"<Types/>", **{f"ppt/slides/slide{i}.xml": b"" for i in range(parts)}})


def hits(check: Any, raw: bytes) -> dict[str, Hit]:
    return {h.symbol: h for h in check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))}


def test_decks_past_the_directory_budget_are_a_limit_and_not_parsed(directory_reads: list[int]) -> None:
    one = deck(100)
    outer = zipped({f"d{i}.pptx": one for i in range(6)})
    budget = room(outer) + 3 * room(one)
    listing = list_archive("decks.zip", io.BytesIO(outer), "zip", Limits(max_members=50, max_directory=budget))
    assert len(directory_reads) == 1 + 3  # the outer zip and three decks; none of the last three's directories
    refused = [text for text in listing.limits if "zip directory" in text]
    assert [text.split(":")[0] for text in refused] == ["decks.zip/d3.pptx", "decks.zip/d4.pptx", "decks.zip/d5.pptx"]
    assert refused[0] == f"decks.zip/d3.pptx: a zip directory of {room(one)} bytes, past the 0 left to parse, not looked at"
    assert listing.directory == budget


def test_a_zip_claiming_one_entry_is_counted_by_its_directory_s_bytes(directory_reads: list[int]) -> None:
    # The end record declares one entry, the directory holds 5,000: zipfile parses all 5,000.
    liar = many_entries_zip(5000, declared=1)
    assert room(liar) >= 5000 * 46
    listing = list_archive("liar.zip", io.BytesIO(liar), "zip", Limits(max_members=10, max_directory=100_000))
    assert directory_reads == [] and listing.entries == []
    assert listing.limits == [f"liar.zip: a zip directory of {room(liar)} bytes, past the 100000 left to parse, not looked at"]


def test_the_directory_budget_is_the_whole_message_s(tmp_path: Path) -> None:
    check = attachment_check(tmp_path, "archive_max_members = 10\n")
    assert check.limits.max_directory == 2560 * 1000
    liar = many_entries_zip(20_000, declared=1)
    assert 2 * room(liar) <= 2560 * 1000 < 3 * room(liar)  # two fit, not three
    parts = b"".join(b"--zz\r\n" + attached(f"part{i}.zip".encode(), liar + bytes([i])) for i in range(3))
    found = hits(check, _three(parts))
    assert found[LIMIT].action == Action.QUARANTINE
    assert "part2.zip: a zip directory of" in found[LIMIT].detail
    assert "part0.zip: a zip" not in found[LIMIT].detail and "part1.zip: a zip" not in found[LIMIT].detail


def test_seven_zips_of_two_thousand_long_names_fit_the_default_budget(tmp_path: Path) -> None:
    # Counted by the smallest entry (46 bytes), 2,000 files named by 100-character paths made 6,350 "entries":
    # seven such zips in a message were quarantined (found by review).
    check = attachment_check(tmp_path)
    source = zipped({f"project/src/module_{i:04d}/" + "x" * 70 + ".py": b"" for i in range(2000)})
    parts = b"".join(b"--zz\r\n" + attached(f"src-{i}.zip".encode(), source + bytes([i])) for i in range(7))
    assert LIMIT not in hits(check, _three(parts))


def _three(parts: bytes) -> bytes:
    """A message of a text part and *parts* (each starting with its boundary line)."""
    return (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nsee\r\n" + parts + b"--zz--\r\n")


@pytest.mark.skipif(not archives.supported("gzip"), reason="libarchive-c is not installed")
def test_the_archives_in_a_zip_are_listed_in_one_child(tmp_path: Path, children: list[list[str]]) -> None:
    # A child each cost the worker about 10 ms: a zip of 2,000 gzip files took 20 s.
    tar = tarred({"setup.exe": b"MZ"})
    logs = zipped({"a.txt": b"hi", "log0.gz": gzip.compress(b"x"), "inner.zip": zipped({"log1.gz": gzip.compress(b"y")}), "b.tar": tar})
    hits(attachment_check(tmp_path), message(attached(b"logs.zip", logs)))
    assert children == [["logs.zip/log0.gz", "logs.zip/inner.zip/log1.gz", "logs.zip/b.tar"]]


@pytest.mark.skipif(not archives.supported("gzip"), reason="libarchive-c is not installed")
def test_listing_children_past_the_message_s_seconds_are_a_limit(tmp_path: Path, children: list[list[str]]) -> None:
    assert AttachmentChecks().archive_process_seconds == 10.0
    check = attachment_check(tmp_path, "archive_process_seconds = 1.5\n")
    logs = zipped({f"log{i}.txt.gz": gzip.compress(b"line %d\n" % i) for i in range(2)})
    parts = b"".join(b"--zz\r\n" + attached(f"logs{i}.zip".encode(), logs + bytes([i])) for i in range(3))
    found = hits(check, _three(parts))  # each child here takes a second of the message's 1.5
    assert children == [["logs0.zip/log0.txt.gz", "logs0.zip/log1.txt.gz"], ["logs1.zip/log0.txt.gz", "logs1.zip/log1.txt.gz"]]
    assert found[LIMIT].action == Action.QUARANTINE
    assert found[LIMIT].detail == ("logs2.zip/log0.txt.gz: gzip archive past the CPU time left to listing processes, not looked at; "
                                   "logs2.zip/log1.txt.gz: gzip archive past the CPU time left to listing processes, not looked at")


@pytest.mark.skipif(not archives.supported("gzip"), reason="libarchive-c is not installed")
def test_without_listing_children_nothing_is_counted(tmp_path: Path, children: list[list[str]]) -> None:
    check = attachment_check(tmp_path, "archive_process = false\narchive_process_seconds = 0.001\n")
    logs = zipped({f"log{i}.txt.gz": gzip.compress(b"line %d\n" % i) for i in range(3)})
    found = hits(check, message(attached(b"logs.zip", logs)))
    assert children == [] and LIMIT not in found
