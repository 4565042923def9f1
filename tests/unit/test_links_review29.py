"""Link extraction review (twenty-ninth session): links a mail client shows and follows that the URI block lists
never looked up (no URIBL_UNREAD either).

- a conditional comment's content (``<!--[if mso]> … <![endif]-->``), which Outlook for Windows renders;
- ``<script>``/``<style>`` inside ``<svg>``/``<math>``, which hold markup there (HTML standard 13.2.6.5);
- a link wrapped in a handler's scheme (``microsoft-edge:https://…``), opened at the link inside;
- an SVG ``<a>`` given its href by ``<set>``/``<animate>``.
"""

from __future__ import annotations

import pytest

from milterd.checks.uribl import link_targets
from milterd.content.mimetext import extract


def domains(html: str) -> list[str]:
    raw = ("From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html).encode()
    found, _addresses = link_targets(extract(raw).uris, frozenset(), 20)
    return found


@pytest.mark.parametrize("html", [
    '<p>hi</p><!--[if mso]><a href="https://evil.test/login">Verify</a><![endif]-->',
    '<!--[if gte mso 9]><v:roundrect href="https://evil.test/login" style="width:200px"><center>Verify</center></v:roundrect><![endif]-->',
    '<svg><script><div><a href="https://evil.test/login">Verify</a></div></script></svg>',
    '<svg><style><p><a href="&#104;ttps://evil.test/">Verify</a></style></svg>',
    '<math><style><p><a href="//evil.test/login">Verify</a></style></math>',
    '<a href="microsoft-edge:https://evil.test/login">Open</a>',
    '<a href="ms-word:ofe|u|https://evil.test/invoice.docx">Invoice</a>',
    '<svg><a><set attributeName="href" to="https://evil.test/login"/><text>Verify</text></a></svg>',
    '<svg><a><animate attributeName="xlink:href" values="https://evil.test/a;https://evil.test/b"/><text>Go</text></a></svg>',
])
def test_a_link_a_client_follows_is_looked_up(html: str) -> None:
    assert domains(html) == ["evil.test"]


def test_a_comment_that_is_not_conditional_still_hides_its_links() -> None:
    assert domains('<!-- <a href="https://evil.test/">old</a> --><p>hi</p>') == []
    assert domains('<script>var a = "<a href=\\"https://evil.test/\\">";</script>') == []  # a script outside SVG is text
