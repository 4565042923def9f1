"""A name may end in one dot (the root's), not two: "helo.test.." and "u@pass.test.." were judged as the names
without their dots (a HELO that resolves, a sender with no problem), while SPF, which takes the root's one dot only,
found no such name (fortieth review). Both checks now read them as what they are: no name."""

from __future__ import annotations

import pytest

from milterd.checks.helo import helo_shape
from milterd.checks.sender import address_problem


@pytest.mark.parametrize(("helo", "kind"), [("mx.example.org", "fqdn"), ("mx.example.org.", "fqdn"), ("mx.example.org..", "not_fqdn"), ("mx..example.org", "not_fqdn"), ("..", "not_fqdn")])
def test_a_helo_name_may_end_in_one_dot(helo: str, kind: str) -> None:
    assert helo_shape(helo).kind == kind


@pytest.mark.parametrize(("sender", "problem"), [("u@example.org", ""), ("u@example.org.", ""), ("u@example.org..", "invalid"), ("u@example.org...", "invalid"), ("u@..", "invalid")])
def test_a_sender_domain_may_end_in_one_dot(sender: str, problem: str) -> None:
    assert address_problem(sender) == problem
