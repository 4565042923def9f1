"""milterd asks Postfix for the macros it reads, whatever Postfix's milter_*_macros say.

A site whose ``milter_mail_macros`` lacked ``{auth_authen}`` (copied from another milter's how-to) had its
logged-in users' mail scored as anyone's (tagged, quarantined, greylisted; not DKIM-signed), and one without
``i`` logged every message without its queue id.  Postfix here sends no macro of its own choice at all.
"""

from __future__ import annotations

import re
from typing import Callable

import pytest

from tests.conftest import message
from tests.harness.stack import Stack, row_for

#: Every stage's macro list emptied.
NO_MACROS = {name: "" for name in (
    "milter_connect_macros", "milter_helo_macros", "milter_mail_macros", "milter_rcpt_macros", "milter_data_macros",
    "milter_end_of_header_macros", "milter_end_of_data_macros", "milter_unknown_command_macros",
)}
RULES = {"tagme.toml": '[[rule]]\nname = "TAGME"\nheader = "Subject"\nregex = \'TAGME\'\nscore = 9.0\ndescription = "tagged"\n'}


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack({"milter": {"trusted_networks": []}}, RULES, postfix_extra=NO_MACROS)


def test_a_logged_in_user_is_known_without_postfix_s_mail_macros(stack: Stack) -> None:
    stack.send(message("login TAGME"), xclient={"ADDR": "192.0.2.44", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org", "LOGIN": "joe"})
    row = row_for(stack, "login TAGME")
    assert row["auth_user"] == "joe"
    assert row["action"] == "accept"  # content rules do not score an authenticated client
    assert re.fullmatch(r"[0-9A-F]{6,}", row["queue_id"]), row["queue_id"]


def test_a_stranger_s_message_has_its_queue_id(stack: Stack) -> None:
    stack.send(message("stranger TAGME"), xclient={"ADDR": "192.0.2.45", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"})
    row = row_for(stack, "stranger TAGME")
    assert row["auth_user"] in ("", None) and row["action"] != "accept"
    assert re.fullmatch(r"[0-9A-F]{6,}", row["queue_id"]), row["queue_id"]
