"""ARC sealing (thirtieth session's review): an upstream host's Authentication-Results with a Latin-1 byte stopped
the seal (dkimpy decodes each such field as UTF-8): ARC_SEAL_ERROR, and a forwarder's mail went out unsealed."""

from __future__ import annotations

from pathlib import Path

import dkim
import pytest

from milterd import dkimsign
from tests.unit.test_arc_seal_review import lookup, sealer_services, seals, through_milterd
from tests.unit.test_dkim import MESSAGE


@pytest.mark.parametrize("field", [
    b"Authentication-Results: upstream.example; spf=pass smtp.mailfrom=caf\xe9@x.example\r\n",
    # A second look: a version other than 1 (authres's UnsupportedVersionError, which dkimpy does not skip).
    b"Authentication-Results: upstream.example 2; spf=pass smtp.mailfrom=cafe@x.example\r\n",
])
def test_an_upstream_results_field_dkimpy_cannot_read_does_not_stop_the_seal(tmp_path: Path, field: bytes) -> None:
    keys = {"list": dkimsign.generate("rsa", 1024), "seal": dkimsign.generate("rsa", 1024)}
    message = field + MESSAGE
    services = sealer_services(tmp_path, keys["seal"])
    try:
        verdict, delivered = through_milterd(services, keys, message)
    finally:
        services.close()
    assert "ARC_SEAL_ERROR" not in verdict.symbols and verdict.details.get("ARC_SEALED") == "d=seal.test s=arc"
    assert field.rstrip(b"\r\n") in delivered  # the field is delivered as it came
    cv, _results, reason = dkim.arc_verify(delivered, dnsfunc=lookup(keys))
    assert cv == b"pass", reason
    assert [s for s in seals(delivered) if "d=seal.test" in s]
