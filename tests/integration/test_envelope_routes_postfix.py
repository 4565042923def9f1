"""A source route in MAIL FROM and RCPT TO, through the real Postfix (thirty-first session's review): Postfix
drops it (RFC 5321 §4.1.1.3) and delivers to the address after it; milterd logged and greylisted the routed
text, an address other than the one delivered to."""

from __future__ import annotations

import uuid
from typing import Callable

import pytest

from tests.conftest import NO_CHECKS, message
from tests.harness.stack import Stack, row_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(NO_CHECKS)


ROUTES = {  # MAIL FROM, RCPT TO: each as Postfix's rewrite_tree reads a route (a later look found the last three)
    "plain": ("<@relay.example:alice@example.org>", "<@a.example,@[192.0.2.1]:bob@example.com>"),
    "hop-without-at": ("<@a.example,b.example:alice@example.org>", "<@[192.0.2.1]x:bob@example.com>"),
    "two-routes": ("<@relay:@relay2:alice@example.org>", "<@ relay.example : bob@example.com>"),
}


@pytest.mark.parametrize("case", sorted(ROUTES))
def test_a_routed_envelope_is_logged_as_postfix_delivers_it(stack: Stack, case: str) -> None:
    sender, recipient = ROUTES[case]
    tag = f"routed {uuid.uuid4().hex[:8]}"
    client = stack.postfix.smtp(xclient={"ADDR": "192.0.2.10", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"})
    try:
        assert client.docmd(f"MAIL FROM:{sender}")[0] == 250
        assert client.docmd(f"RCPT TO:{recipient}")[0] == 250
        assert client.data(message(subject=tag))[0] == 250
    finally:
        client.quit()
    [delivered] = stack.sink.wait(1, match=lambda m: tag in m.header("Subject"))
    row = row_for(stack, tag)
    assert (row["sender"], row["recipients"]) == ("alice@example.org", ["bob@example.com"]), (row["sender"], row["recipients"], delivered)
