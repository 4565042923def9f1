"""milterd, all of it, on Apache SpamAssassin's public corpus by issue #13's protocol, through ``milterd check``.

A scratch classifier model is learned from the training folders (``spam-1``,
``easy-ham-1``, first half of ``hard-ham-1`` by file name) and the evaluation
folders (``spam-2``, ``easy-ham-2``, second half of ``hard-ham-1``) are judged
by the whole pipeline with a private spamd (``-L``, no Bayes of its own) at the
default thresholds.  The checks that need DNS are off (DNS is offline here), and
``HDR_DATE_PAST`` too (weighed 0 in a local rule file: every message of 2002–03 would
trip it, and ``date_past`` stops at ten years).  Prints ``milterd check --json``'s result.

Usage: ``nice -n 10 .venv/bin/python -m bench.learner_pipeline [--tiers ABOVE,BELOW] [OUT.json]``
(``--tiers``: ``[learner] skip_spamd_above`` / ``skip_spamd_below``, "off" for either; see bench/learner_tiers.py)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench.corpus import fetch
from bench.learner_eval import CACHE, split
from bench.learner_tiers import tiers_section
from tests.harness.scanners import Spamd

DNS_CHECKS = ("dnsbl", "rdns", "helo", "sender", "spf", "dkim", "dmarc", "arc", "uribl")


def evaluation_config(base: Path, spamd_address: str, extra: str = "") -> Path:
    """milter.conf of "milterd, all of it" offline: the DNS checks off (DNS is offline), the
    corpus's 2002 Dates not scored as past, spamd (no Bayes) at *spamd_address*; written in *base*."""
    off = "".join(f"[checks.{check}]\nenabled = false\n" for check in DNS_CHECKS)
    (base / "rules").mkdir(exist_ok=True)
    (base / "rules" / "bench.toml").write_text("[symbols]\nHDR_DATE_PAST = 0.0\n")
    conf = base / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{base}/live.sqlite"\n{off}'
                    f'[spamd]\nenabled = true\naddress = "{spamd_address}"\n{extra}')
    return conf


def main() -> None:
    """Run the pipeline over the evaluation folders with a model learned from the training folders."""
    argv = sys.argv[1:]
    extra = tiers_section(argv.pop(argv.index("--tiers") + 1)) if "--tiers" in argv else ""
    argv = [a for a in argv if a != "--tiers"]
    data = fetch(CACHE)
    train, test = split(data)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        for name, paths in (("hard-train", train["hard"]), ("hard-test", test["hard"])):
            (base / name).mkdir()
            for path in paths:
                (base / name / path.name).symlink_to(path)
        spamd = Spamd(base, children=2).start()
        try:
            conf = evaluation_config(base, spamd.address, extra)
            command = [sys.executable, "-m", "milterd", "check", "-c", str(conf), "--json", "--progress", "never",
                       "--train-ham", str(data / "easy-ham-1"), str(base / "hard-train"), "--train-spam", str(data / "spam-1"),
                       "--ham", str(data / "easy-ham-2"), str(base / "hard-test"), "--spam", str(data / "spam-2")]
            out = subprocess.run(command, capture_output=True, text=True, check=False)
        finally:
            spamd.stop()
    sys.stderr.write(out.stderr)
    if argv:
        Path(argv[0]).write_text(out.stdout)
    else:
        sys.stdout.write(out.stdout)


if __name__ == "__main__":
    main()
