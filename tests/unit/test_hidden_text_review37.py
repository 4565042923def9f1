"""Text past the HTML parser's tag bound and text behind invisible characters reach the body rules' text
(thirty-seventh session's review; through Postfix: tests/integration/test_hidden_text_review37.py)."""

from __future__ import annotations

from pathlib import Path

from milterd.checks.custom import CustomRules
from milterd.config import load_config
from milterd.content.mimetext import MAX_TAGS, extract, html_to_text
from milterd.message.model import Envelope, Session, Spool
from milterd.services import build
from milterd.text import without_invisible

SENTENCE = "Send money by western union"


def test_markup_past_the_tag_bound_gives_its_text_tags_dropped() -> None:
    text, links = html_to_text("<i>" * (MAX_TAGS + 1) + f"<p>{SENTENCE}&nbsp;now</p><a href='http://x.example/'>here</a> 1 < 2")
    assert text.endswith(f"{SENTENCE}\xa0now here 1 < 2")
    assert links == ["http://x.example/"]
    short, _ = html_to_text("<i>" * 10 + f"<p>{SENTENCE}</p><script>var hidden = 1;</script>")
    assert short == SENTENCE  # parsed: a script's content is no text
    unclosed, _ = html_to_text("<a" * (MAX_TAGS + 1) + "<b>visible")
    assert unclosed.endswith("visible")


def test_invisible_characters_spend_no_text_budget() -> None:
    raw = ("Content-Type: text/plain; charset=utf-8\r\n\r\n" + "\u200b" * 3_000 + f"\r\n{SENTENCE}\r\n").encode()
    found = extract(raw, 1_000)
    assert SENTENCE in found.text and not found.truncated
    assert without_invisible("vi\u200bag\u00adra \U000e0020x") == "viagra x"
    plain = "plain ASCII"
    assert without_invisible(plain) is plain


def test_stacked_combining_marks_spend_no_text_budget() -> None:
    raw = ("Content-Type: text/plain; charset=utf-8\r\n\r\na" + "\u0301" * 3_000 + f"\r\n{SENTENCE}\r\n").encode()
    found = extract(raw, 1_000)
    assert SENTENCE in found.text and not found.truncated


def test_text_cut_for_the_body_rules_is_said_in_a_symbol(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.toml").write_text("[custom]\nmax_text = \"1K\"\n\n[[rule]]\nname = \"BODY_WU\"\nbody = '(?i)western union'\nscore = 20\n")
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[dns]\nnameservers = ["127.0.0.1:9"]\n[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[rules]\ndir = "{tmp_path / "rules"}"\n')
    services = build(load_config(conf))
    try:
        [custom] = [check for check in services.checks if isinstance(check, CustomRules)]

        def hits(body: str) -> dict[str, str]:
            envelope = Envelope(spool=Spool(1 << 20))
            envelope.spool.write(body.encode())
            return {hit.symbol: hit.detail for hit in custom.on_eom(Session(client_addr="192.0.2.1"), envelope)}

        padded = hits("x " * 2_000 + SENTENCE + "\r\n")
        assert padded == {"CUSTOM_TEXT_CUT": "text past 1024 characters not searched"}
        assert hits(f"{SENTENCE}\r\n") == {"BODY_WU": "western union"}
        assert hits(" ".join(f"http://h{n}.example/" for n in range(30)) + "\r\n") == {}  # 600 characters: all searched
        # Third look: NFKC writes U+FDFA as 18 characters, and what the rules search is cut to max_text: said too.
        assert "CUSTOM_TEXT_CUT" in hits("\ufdfa" * 100 + f"\r\n{SENTENCE}\r\n")
        # Fourth look: text exactly max_text long, nothing cut, is no cut text.
        assert hits("y" * 1022 + "\r\n") == {}
    finally:
        services.close()


def test_html_past_the_tag_bound_is_read_whole_and_not_said_cut() -> None:
    # Third look: since its text is read, a newsletter of 60,000 tags is no cut text (CUSTOM_TEXT_CUT fired on it).
    markup = "<table>" + "<tr><td>item</td></tr>" * 20_000 + f"<p>{SENTENCE}</p></table>"
    found = extract(f"Content-Type: text/html\r\n\r\n{markup}\r\n".encode(), 1 << 20)
    assert found.text.endswith(SENTENCE) and not found.truncated
