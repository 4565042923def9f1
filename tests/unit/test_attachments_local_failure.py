"""The attachment check answers 451 when this machine runs short while decoding (the disk or quota full,
no file descriptor, no memory): such a message passed with ATTACH_ERROR (score 0) as if it had no
attachment, a banned file in it included.  An error the content causes is held as a limit (limit_action)."""

from __future__ import annotations

import base64
import errno
import io
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd.checks import attachments as policy
from milterd.content import archives, mimeparts
from milterd.content.archives import Limits, list_archive, local_failure
from milterd.message.model import Action
from tests.harness.messages import zipped
from tests.unit.test_attachments_tnef import checker, hits_of, message

PE = b"MZ\x90\x00" + b"\x00" * 200


def two_files(*files: tuple[str, bytes]) -> bytes:
    parts = b"".join(b"--zz\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"" + name.encode()
                     + b"\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data).replace(b"\n", b"\r\n") for name, data in files)
    return b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n" + parts + b"--zz--\r\n"


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
                                     OSError(errno.EMFILE, "Too many open files"), MemoryError()])
def test_running_short_while_decoding_is_a_tempfail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    def short(*_args: Any, **_kwargs: Any) -> Iterator[Any]:
        raise failure
        yield  # a generator, as the real one

    monkeypatch.setattr(mimeparts, "attachments", short)
    hits = hits_of(checker(tmp_path), message(zipped({"setup.exe": PE}), b"files.zip", b"application/zip"))
    error = hits["ATTACH_ERROR"]
    assert error.action == Action.TEMPFAIL
    assert str(error.reply) == "451 4.3.0 Attachments could not be checked now, try again later"


def test_an_error_the_content_causes_is_held_as_a_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It passed with 0 points, its attachments never judged: a sender who finds such a defect sends any file."""
    def hostile(*_args: Any, **_kwargs: Any) -> Iterator[Any]:
        raise OSError(errno.EINVAL, "Invalid argument")
        yield

    monkeypatch.setattr(mimeparts, "attachments", hostile)
    raw = message(zipped({"a.txt": b"x"}), b"files.zip", b"application/zip")
    hits = hits_of(checker(tmp_path), raw)
    assert hits["ATTACH_ERROR"].action == Action.QUARANTINE and hits["ATTACH_ERROR"].detail == "OSError: [Errno 22] Invalid argument"
    assert hits_of(checker(tmp_path, 'limit_action = "score"\n'), raw)["ATTACH_ERROR"].action is None
    rejected = hits_of(checker(tmp_path, 'limit_action = "reject"\n'), raw)["ATTACH_ERROR"]
    assert rejected.action == Action.REJECT and str(rejected.reply) == "550 5.7.1 Attachments could not be checked"


def test_one_attachment_that_cannot_be_judged_is_held_and_the_others_judged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = policy.AttachmentPolicy.judge

    def failing(self: Any, attachment: Any, budget: Any, depth: int = 1) -> Any:
        if attachment.filename == "first.zip":
            raise ValueError("a defect")
        return real(self, attachment, budget, depth)

    monkeypatch.setattr(policy.AttachmentPolicy, "judge", failing)
    raw = two_files(("first.zip", zipped({"a.txt": b"x"})), ("second.exe", PE))
    hits = hits_of(checker(tmp_path), raw)
    assert hits["ATTACH_ERROR"].action == Action.QUARANTINE and hits["ATTACH_ERROR"].detail == "first.zip: ValueError: a defect"
    assert hits["ATTACH_BANNED"].action == Action.REJECT


def test_a_full_disk_while_listing_an_archive_is_not_an_unreadable_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archives, "_walk_zip", full)
    limits = Limits(max_depth=3, max_members=100, max_size=1 << 20)
    with pytest.raises(OSError) as caught:
        list_archive("files.zip", io.BytesIO(zipped({"setup.exe": PE})), "zip", limits)
    assert local_failure(caught.value)

    def broken(*_args: Any) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(archives, "_walk_zip", broken)
    listing = list_archive("files.zip", io.BytesIO(zipped({"setup.exe": PE})), "zip", limits)
    assert listing.limits and "unreadable zip archive" in listing.limits[0]  # a listing stopped: a limit
