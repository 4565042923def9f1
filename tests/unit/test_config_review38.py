"""Settings that let mail through unjudged, refused at start (thirty-eighth review)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config_fuzz import refused, start


@pytest.mark.parametrize(("conf", "key"), [
    # A virus passed: only the headers were scanned (0, or 25 meant as megabytes); spamd was never asked.
    ("[clamav]\nmax_size = 0\n", "[clamav] max_size"),
    ("[clamav]\nmax_size = 25\n", "[clamav] max_size"),
    ('[spamd]\nmax_size = "0"\n', "[spamd] max_size"),
    # Thirty-ninth session: 0 (Postfix's "no limit" for message_size_limit) had no message's DKIM verified (DMARC
    # never passed), or the classifier read nothing.
    ("[checks.dkim]\nenabled = true\nmax_size = 0\n", "[checks.dkim] max_size"),
    ("[learner]\nmax_size = 0\n", "[learner] max_size"),
])
def test_a_scanner_size_that_scans_nothing_is_refused(tmp_path: Path, conf: str, key: str) -> None:
    error = refused(tmp_path, conf)
    assert error.key == key and "1024" in error.reason


def test_scanner_sizes_from_one_kilobyte_are_taken(tmp_path: Path) -> None:
    assert start(tmp_path, '[clamav]\nmax_size = "1K"\n[spamd]\nmax_size = 1024\n[checks.dkim]\nenabled = true\nmax_size = "1K"\n'
                           '[learner]\nmax_size = 1024\n') == "accepted"


@pytest.mark.parametrize("text", ["<html><body><h1>404 Not Found</h1></body></html>\n", "root:x:0:0:root:/root:/bin/bash\ncom\nuk\n"])
def test_a_file_that_is_no_public_suffix_list_is_refused(tmp_path: Path, text: str) -> None:
    # It was taken: each line a "rule", co.uk became one organization, attacker.co.uk aligned with bank.co.uk.
    psl = tmp_path / "psl.dat"
    psl.write_text(text)
    error = refused(tmp_path, f'[checks.dmarc]\nenabled = true\npublic_suffix_list = "{psl}"\n')
    assert error.key == "[checks.dmarc] public_suffix_list" and "co.uk" in error.reason


def test_a_real_public_suffix_list_is_taken(tmp_path: Path) -> None:
    psl = tmp_path / "psl.dat"
    psl.write_text("// ===BEGIN ICANN DOMAINS===\ncom\nuk\nco.uk\n// ===END ICANN DOMAINS===\n")
    assert start(tmp_path, f'[checks.dmarc]\nenabled = true\npublic_suffix_list = "{psl}"\n') == "accepted"


def test_two_codes_of_one_list_with_one_name_are_refused(tmp_path: Path) -> None:
    # Merged silently: a 127.0.0.2 listing took the second code's score 9 and its reject.
    rules = ('[[dnsbl]]\nname = "MYBL"\nzone = "bl.example"\ncodes = [\n'
             '  { name = "A", answers = ["127.0.0.2"], score = 1 },\n'
             '  { name = "A", answers = ["127.0.0.3"], score = 9, action = "reject" },\n]\n')
    error = refused(tmp_path, "", rules)
    assert error.key == "dnsbl MYBL.codes[1].name" and "names another code" in error.reason



@pytest.mark.parametrize(("url", "said"), [
    ("mysql://milterd@db/milterd", "SQLite or PostgreSQL, not mysql"),
    ("oracle://db/milterd", "SQLite or PostgreSQL, not oracle"),
    ("postgresql+psycopg2cffi://milterd@db/milterd", "is not installed"),
])
def test_a_database_milterd_cannot_use_is_refused_with_the_file_and_key(tmp_path: Path, url: str, said: str) -> None:
    # rules lint said OK; serve then exited 1 with "No module named 'MySQLdb'", without the file and key.
    error = refused(tmp_path, f'[database]\nurl = "{url}"\n')
    assert error.key == "[database] url" and said in error.reason


@pytest.mark.parametrize("conf", [
    "[learner]\nautolearn_spam = -5\nautolearn_ham = 10\n",
    "[learner]\nskip_spamd_above = -100\nskip_spamd_below = 100\n",
    "[learner]\nautolearn_spam = 3\nautolearn_ham = 3\n",
])
def test_crossed_learner_bounds_are_refused(tmp_path: Path, conf: str) -> None:
    # Accepted: nearly every message learned as spam, or spamd never asked.
    error = refused(tmp_path, conf)
    assert error.key == "learner" and "must be above" in error.reason


def test_learner_bounds_in_order_are_taken(tmp_path: Path) -> None:
    conf = "[learner]\nautolearn_spam = 15\nautolearn_ham = -2\nskip_spamd_above = 12\nskip_spamd_below = -3\n"
    assert start(tmp_path, conf) == "accepted"
