"""Everything a running milterd needs, built once from milter.conf and rules/.

:func:`build` validates the whole configuration (milter.conf, every rule file,
every check's options) before anything starts, so that ``serve``, a SIGHUP
reload, ``rules lint`` and ``check`` refuse a bad configuration the same way.
Connections to the outside (the database, the resolver) are opened lazily, in
the process that uses them: a worker must not inherit its parent's sockets.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .checks import Check, Symbol, discover
from .config import Config, ConfigError
from .dns import Resolver
from .ruleset import Ruleset, load_ruleset
from .store import Store


@dataclass
class Services:
    """The configuration, the rules, the checks and the lazily opened backends."""

    config: Config
    ruleset: Ruleset = field(default_factory=Ruleset)
    checks: list[Check] = field(default_factory=list)
    symbols: dict[str, Symbol] = field(default_factory=dict)
    #: The names of the symbols the checks define themselves (not those of the rule files' lists).
    builtin: frozenset[str] = frozenset()
    #: The DNS list zones the checks ask (DNSBL, DNSWL, URI lists): names no client chooses, whose lookups may
    #: tell the resolver its first nameserver is down (:class:`~milterd.dns.Resolver`'s ``list_zones``).
    list_zones: set[str] = field(default_factory=set)
    _store: "Store | None" = None
    _resolver: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def weight(self, symbol: str) -> float:
        """The score of *symbol*: rules/ first, then the check's default, else 0."""
        if symbol in self.ruleset.weights:
            return self.ruleset.weights[symbol]
        known = self.symbols.get(symbol)
        return known.score if known else 0.0

    def describe(self, symbol: str) -> str:
        """The one-line description of *symbol*."""
        if symbol in self.ruleset.descriptions:
            return self.ruleset.descriptions[symbol]
        known = self.symbols.get(symbol)
        return known.description if known else ""

    @property
    def store(self) -> "Store":
        """The SQL store of this process, opened on first use."""
        store = self._store
        if store is not None:  # every check asks per message: no lock once it exists
            return store
        with self._lock:
            if self._store is None:
                self._store = Store(self.config.database)
            return self._store

    @property
    def resolver(self) -> Any:
        """The DNS resolver of this process, created on first use."""
        resolver = self._resolver
        if resolver is not None:
            return resolver
        with self._lock:
            if self._resolver is None:
                self._resolver = Resolver(self.config.dns, self.list_zones)
            return self._resolver

    def after_fork(self) -> None:
        """Forget connections inherited from the parent; the child opens its own."""
        self._store = None
        self._resolver = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the store's connections."""
        if self._store is not None:
            self._store.close()


def build(config: Config) -> Services:
    """Load rules/ and instantiate the enabled checks; raise ConfigError on any problem."""
    classes = discover()
    known_sections = {section for cls in classes for section in cls.rule_sections}
    ruleset = load_ruleset(config.rules_dir, known_sections)
    services = Services(config=config, ruleset=ruleset)
    for cls in classes:
        for symbol in cls.symbols:
            services.symbols[symbol.name] = symbol
    services.builtin = frozenset(services.symbols)
    for cls in classes:
        try:
            if not cls.enabled(services):
                continue
            check = cls(services)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a check's setup failing otherwise is refused as a configuration problem, not a traceback
            raise ConfigError(config.path or "milter.conf", f"check {cls.name}", f"cannot be set up: {type(exc).__name__}: {exc}") from exc
        services.checks.append(check)
        for symbol in check.dynamic_symbols():
            services.symbols[symbol.name] = symbol
    for check in services.checks:
        check.loaded()
    for name, path in ruleset.weight_files.items():
        if name not in services.symbols:
            raise ConfigError(path, f"symbols.{name}", "no check emits this symbol (misspelt, or a list of a check that is off?)")
    return services
