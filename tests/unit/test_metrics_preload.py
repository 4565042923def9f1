"""The metrics page's modules are imported before serve drops its privileges (metrics.preload): started after
the drop, an interpreter the service account cannot read (under /root) made that import a ModuleNotFoundError
traceback (found by review)."""

from __future__ import annotations

import sys

import pytest

from milterd import metrics

WANTED = ("prometheus_client.exposition", "prometheus_client.multiprocess")


@pytest.mark.parametrize(("listen", "loaded"), [("127.0.0.1:9100", True), ("", False)])
def test_preload_imports_the_metrics_modules_only_when_the_page_is_served(monkeypatch: pytest.MonkeyPatch, listen: str, loaded: bool) -> None:
    for name in [name for name in sys.modules if name == "prometheus_client" or name.startswith("prometheus_client.")]:
        monkeypatch.delitem(sys.modules, name)  # given back after the test
    metrics.preload(listen)
    assert all(name in sys.modules for name in WANTED) is loaded
