"""The hybrid archives of tests/unit/test_archive_hybrids_review.py listed in a listing child (a forked process):
the child knows a member's other names, and what it lists is not listed again by the worker."""

from __future__ import annotations

import pytest

from milterd.content import archives
from tests.unit.test_archive_hybrids_review import CONTENTS, deferred_member_keeps_its_other_names, gzip_stored_name_is_used, tar_then_zip_paths

pytestmark = pytest.mark.skipif(not archives.supported("gzip"), reason="libarchive-c is not installed")


@pytest.mark.parametrize("content", sorted(CONTENTS))
def test_the_name_a_gzip_header_stores_is_known_to_the_child(content: str) -> None:
    gzip_stored_name_is_used(True, content)


def test_a_deferred_member_keeps_its_other_names_in_the_child() -> None:
    deferred_member_keeps_its_other_names(True)


def test_a_tar_then_zip_is_listed_once_with_a_child() -> None:
    # The child listed the tar and the zip after it, then the worker the zip again.
    assert tar_then_zip_paths(True) == tar_then_zip_paths(False) == ["a.zip/readme.txt", "a.zip/evil.exe"]
