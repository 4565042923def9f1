"""Rule files, a review of the twenty-eighth session: a meta naming GREYLIST_DEFERRED (known only after the metas)
is refused, rules may not take the pipeline's own symbols, names and zones ending in a newline are refused, and an
unnamed table is reported at its own position."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.config import ConfigError, load_config
from milterd.services import build


def services_with(tmp_path: Path, rules: str, conf: str = "") -> object:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "local.toml").write_text(rules)
    (tmp_path / "milter.conf").write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n{conf}')
    return build(load_config(tmp_path / "milter.conf"))


def test_fix_a_meta_naming_greylist_deferred_is_refused(tmp_path: Path) -> None:
    # Accepted, it never hit: the greylist check says GREYLIST_DEFERRED after the metas are evaluated.
    with pytest.raises(ConfigError, match="GREYLIST_DEFERRED is only known after the verdict"):
        services_with(tmp_path, '[[rule]]\nname = "META_GL"\nmeta = "GREYLIST_DEFERRED"\nscore = 5.0\n',
                      "[greylist]\nenabled = true\nwhitelist_providers = false\n")


@pytest.mark.parametrize("name", ["EOM_TIMEOUT", "CHECK_ERROR"])
def test_fix_a_rule_may_not_take_a_symbol_of_the_pipeline(tmp_path: Path, name: str) -> None:
    # A body rule named EOM_TIMEOUT that hit made the pipeline skip every later check (DMARC, spamd).
    with pytest.raises(ConfigError, match=f"rule {name}: a built-in check already emits this symbol"):
        services_with(tmp_path, f'[[rule]]\nname = "{name}"\nbody = "hello"\nscore = 9.0\n')


def test_fix_names_and_zones_ending_in_a_newline_are_refused(tmp_path: Path) -> None:
    # "$" matched before a final newline: the name went into X-Spam-Status with a bare LF, the zone was asked as "net\\n".
    with pytest.raises(ConfigError, match="name"):
        services_with(tmp_path, '[[rule]]\nname = "BODY_HELLO\\n"\nbody = "hello"\nscore = 1.0\n')
    with pytest.raises(ConfigError, match="zone"):
        services_with(tmp_path, '[[dnsbl]]\nname = "EXAMPLE"\nzone = "bl.example.net\\n"\n')


def test_fix_an_unnamed_table_is_reported_at_its_own_position(tmp_path: Path) -> None:
    named = "".join(f'[[rule]]\nname = "BODY_R{n}"\nbody = "r{n}"\nscore = 1.0\n' for n in range(5))
    # The sixth [[rule]] was reported as rule[0] (each table merged by name its own source).
    with pytest.raises(ConfigError, match=r"rule\[5\]"):
        services_with(tmp_path, named + '[[rule]]\nbody = "nameless"\nscore = 1.0\n')


def test_fix_the_rules_of_a_message_share_a_time_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from milterd.checks import custom
    from milterd.message.model import Session
    from tests.harness.messages import envelope_of

    services = services_with(tmp_path, '[[rule]]\nname = "BODY_HELLO"\nbody = "hello"\nscore = 1.0\n'
                                       '[[rule]]\nname = "URI_EVIL"\nuri = "evil"\nscore = 1.0\n')
    check = next(c for c in services.checks if isinstance(c, custom.CustomRules))  # type: ignore[attr-defined]
    raw = b"Subject: x\r\n\r\nhello, see http://evil.example/\r\n"
    assert [h.symbol for h in check.on_eom(Session(), envelope_of(raw))] == ["BODY_HELLO", "URI_EVIL"]
    # Each search gave up after 0.5 s and each rule after 1 s, but nothing bounded a message: 40 slow rules took 20 s.
    monkeypatch.setattr(custom, "MESSAGE_SEARCH_BUDGET", 0.0)
    assert list(check.on_eom(Session(), envelope_of(raw))) == []
    assert "2 rule(s) not searched, counted as no match: BODY_HELLO, URI_EVIL" in caplog.text


def test_fix_a_score_past_a_million_is_refused(tmp_path: Path) -> None:
    # Two hits of 1e308 summed to inf, the verdict hanging on the order the hits were added in.
    with pytest.raises(ConfigError, match="must be between -1,000,000 and 1,000,000"):
        services_with(tmp_path, '[[rule]]\nname = "BODY_HUGE"\nbody = "x"\nscore = 1e308\n')
    with pytest.raises(ConfigError, match="must be between"):
        services_with(tmp_path, "[symbols]\nHDR_DATE_MISSING = -2e6\n")


def test_fix_only_the_rules_own_searches_spend_the_message_s_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from milterd.checks import custom
    from milterd.message.model import Session
    from tests.harness.messages import envelope_of

    services = services_with(tmp_path, '[[rule]]\nname = "SUBJ_X"\nheader = "Subject"\nregex = "x"\nscore = 1.0\n'
                                       '[[rule]]\nname = "BODY_HELLO"\nbody = "hello"\nscore = 1.0\n')
    check = next(c for c in services.checks if isinstance(c, custom.CustomRules))  # type: ignore[attr-defined]
    envelope = envelope_of(b"Subject: x\r\n\r\nhello\r\n")
    assert [h.symbol for h in check.on_eoh(Session(), envelope)] == ["SUBJ_X"]
    later = time.monotonic() + 60
    monkeypatch.setattr(time, "monotonic", lambda: later)  # a minute of the body arriving and clamd reading, frozen there
    # The budget ran from the first header search: the body rules of a large message were never searched.
    assert [h.symbol for h in check.on_eom(Session(), envelope)] == ["BODY_HELLO"]
