"""Socket specifications in Postfix's and Sendmail's spellings."""

from __future__ import annotations

import pytest

from milterd.message.reply import Reply, setreply_args
from milterd.milter.supervisor import parse_socket


@pytest.mark.parametrize(
    ("spec", "libmilter", "family"),
    [
        ("inet:127.0.0.1:8895", "inet:8895@127.0.0.1", "inet"),
        ("inet:8895@127.0.0.1", "inet:8895@127.0.0.1", "inet"),
        ("inet:localhost:8895", "inet:8895@localhost", "inet"),
        ("inet:[::1]:8895", "inet6:8895@::1", "inet6"),
        ("inet6:8895@::1", "inet6:8895@::1", "inet6"),
        ("unix:/run/milterd/milterd.sock", "unix:/run/milterd/milterd.sock", "unix"),
    ],
)
def test_parse_socket(spec: str, libmilter: str, family: str) -> None:
    parsed = parse_socket(spec)
    assert parsed.libmilter == libmilter
    assert parsed.family == family


@pytest.mark.parametrize("spec", ["inet:127.0.0.1", "tcp:1.2.3.4:25", "unix:relative.sock", "inet:host:99999", ""])
def test_bad_socket_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_socket(spec)


def test_setreply_args() -> None:
    assert setreply_args(Reply("550", "5.7.1", "Virus found: Eicar")) == ("550", "5.7.1", "Virus found: Eicar")
    assert setreply_args(Reply("451", "4.7.1", "Greylisted, 100% sure")) == ("451", "4.7.1", "Greylisted, 100%% sure")
    assert setreply_args(Reply("554", None, "blocked")) == ("554", None, "blocked")
