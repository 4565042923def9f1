"""The attachment check as a worker builds it, for unit tests that judge messages in process."""

from __future__ import annotations

from pathlib import Path

from milterd.checks.attachments import AttachmentPolicy
from milterd.config import load_config
from milterd.services import build


def attachment_check(tmp_path: Path, options: str = "") -> AttachmentPolicy:
    """The attachments check of a configuration with a SQLite log under *tmp_path*, a closed resolver, and
    *options* (TOML lines) in ``[checks.attachments]``."""
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
                    f"[checks.attachments]\n{options}")
    found = next(c for c in build(load_config(conf)).checks if c.name == "attachments")
    assert isinstance(found, AttachmentPolicy)
    return found
