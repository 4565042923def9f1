"""The score before spamd that the tiers compare with their bounds, from a review (thirty-first session): a
DNS list hit returned at CONNECT and again at MAIL FROM (``[checks.dnsbl] delay_reject = false``) counted twice
there while the verdict counts it once, so spamd was skipped below ``skip_spamd_above``."""

from __future__ import annotations

from pathlib import Path

from milterd.checks.spamassassin import SpamAssassinCheck
from milterd.config import Config
from milterd.message.model import Envelope, Hit, Session, Spool
from milterd.services import build


def test_a_symbol_hit_twice_counts_once_before_spamd(tmp_path: Path) -> None:
    services = build(Config().with_changes({
        "database.url": f"sqlite:///{tmp_path / 's.sqlite'}", "dns.nameservers": ["127.0.0.1:9"], "spamd.enabled": True,
        "learner.skip_spamd_above": 7.0,
    }))
    try:
        check = next(c for c in services.checks if isinstance(c, SpamAssassinCheck))
        listed = Hit("DNSBL_SPAMHAUS_PBL", score=2.0)
        session = Session(client_addr="192.0.2.10", hits=[listed])
        envelope = Envelope(spool=Spool(1024), hits=[listed, Hit("BAYES_999", score=4.0)])
        assert check.confident_score(session, envelope) is None  # 6 before spamd: below 7, spamd is asked
        envelope.hits.append(Hit("OTHER_RULE", score=1.5))
        assert check.confident_score(session, envelope) == 7.5
    finally:
        services.close()
