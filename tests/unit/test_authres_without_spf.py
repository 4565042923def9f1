"""With ``[checks.spf] enabled = false`` a forged Authentication-Results claiming our authserv-id was
delivered, and the DKIM, DMARC and ARC results were written nowhere: both switches live in
``[checks.spf]`` and ran only with SPF.  They now run either way; SPF itself is not evaluated."""

from __future__ import annotations

from pathlib import Path

import authres

from milterd.checks.spf import Spf
from milterd.config import load_config
from milterd.message.model import Action, Envelope, Session, Spool, Verdict
from milterd.services import Services, build


def _services(tmp_path: Path, spf: str) -> Services:
    path = tmp_path / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
                    f'[milter]\nauthserv_id = "mx.example.org"\n[checks.spf]\n{spf}')
    return build(load_config(path))


def _spf(services: Services) -> Spf | None:
    return next((c for c in services.checks if isinstance(c, Spf)), None)


def test_forged_authentication_results_are_removed_with_spf_off(tmp_path: Path) -> None:
    check = _spf(_services(tmp_path, "enabled = false\n"))
    assert check is not None
    session = Session(client_addr="192.0.2.7")
    envelope = Envelope(spool=Spool(1024), sender="alice@example.com")
    envelope.headers += [("Authentication-Results", b" mx.example.org; dkim=pass header.d=bank.example"),
                         ("Authentication-Results", b" other.example; spf=pass")]
    assert check.on_mail(session, envelope) == ()  # SPF itself is not evaluated
    check.on_verdict(session, envelope, Verdict(Action.ACCEPT, 0.0, {}, {}, ""))
    removed = [(e.op, e.index, e.value) for e in envelope.edits if e.name == "Authentication-Results" and e.op == "change"]
    assert removed == [("change", 1, "")]  # ours (forged) removed, the other server's kept


def test_every_switch_off_builds_no_check(tmp_path: Path) -> None:
    assert _spf(_services(tmp_path, "enabled = false\nauthentication_results = false\nremove_forged = false\n")) is None


def test_an_authserv_id_written_with_a_final_dot_is_written_without_it(tmp_path: Path) -> None:
    path = tmp_path / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
                    '[milter]\nauthserv_id = "mx.example.org."\n')
    check = _spf(build(load_config(path)))
    assert check is not None and check.authserv_id == "mx.example.org"
    session = Session(client_addr="192.0.2.7", auth_user="alice")
    envelope = Envelope(spool=Spool(1024), sender="alice@example.com")
    envelope.headers.append(("Authentication-Results", b" mx.example.org.; dkim=pass"))
    check.on_verdict(session, envelope, Verdict(Action.ACCEPT, 0.0, {}, {}, ""))
    written = [e.value for e in envelope.edits if e.op == "insert"]
    removed = [e.index for e in envelope.edits if e.op == "change"]
    assert removed == [1]  # the forged one, with its dot
    assert written and written[0].startswith("mx.example.org;")
    assert authres.AuthenticationResultsHeader.parse("Authentication-Results: " + written[0]).authserv_id == "mx.example.org"
