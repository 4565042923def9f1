"""``milterd learn`` reads a file of LF lines as the milter reads its CRLF copy (review, thirty-sixth session).

``split_message`` looked for CRLF CRLF first: in a file of LF lines (a mailbox, a Maildir) whose body held a CRLF
blank line, the body up to there was read as header lines, and its lines without a colon were dropped: learned
without the words the milter, reading the CRLF copy, classifies it by.  And ``[learner] max_size`` cut the file
as stored, more of its text than the milter's cut of the CRLF copy holds.
"""

from __future__ import annotations

from milterd.commands.learn import prepare
from milterd.learner.tokenizer import split_message, tokenize

LF_FILE = b"From: a@example.org\nSubject: greetings\n\nhello there everybody\r\n\r\nmore words follow\n"


def test_a_crlf_blank_line_in_the_body_of_an_lf_file_is_body() -> None:
    section, body = split_message(LF_FILE)
    assert section == b"From: a@example.org\nSubject: greetings"
    assert body.startswith(b"hello there everybody")
    assert {"hello", "there", "everybody", "more", "words", "follow"} <= set(tokenize(LF_FILE))


def test_the_lf_file_and_its_crlf_copy_give_the_same_words() -> None:
    crlf = LF_FILE.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert set(tokenize(LF_FILE)) == set(tokenize(crlf))


def test_learn_cuts_a_file_of_lf_lines_where_the_milter_cuts_its_crlf_copy() -> None:
    # The milter classifies the first max_size bytes of the CRLF message; learn cut the file as stored (LF):
    # about 3 % more of a file of short lines, words the milter never looks up for the same message.
    lines = b"".join(b"word%d filler\n" % number for number in range(400))
    lf = b"From: a@example.org\nSubject: long\n\n" + lines
    crlf = lf.replace(b"\n", b"\r\n")
    assert prepare(lf, 2000)[1] == prepare(crlf, 2000)[1]
