"""bench --baseline: an older milterd gets the same configuration less the keys it does not know."""

from __future__ import annotations

from bench.scenarios import prune_unknown


def test_unknown_sections_and_keys_are_dropped_recursively() -> None:
    schema = {"milter": {"workers": None, "trusted_networks": None}, "checks": {"dnsbl": {"enabled": None}, "spf": {"enabled": None}}}
    sections = {
        "milter": {"workers": 2, "max_headers": 1000, "trusted_networks": []},
        "checks": {"dnsbl": {"enabled": False}, "dkim": {"enabled": False}, "spf": {"enabled": False}},
        "learner": {"enabled": False},
    }
    assert prune_unknown(sections, schema) == {
        "milter": {"workers": 2, "trusted_networks": []},
        "checks": {"dnsbl": {"enabled": False}, "spf": {"enabled": False}},
    }


def test_a_table_value_under_a_plain_key_is_kept_whole() -> None:
    # sender_logins is a dict-valued key, not a section: the schema says None below it.
    schema = {"checks": {"local_domains": {"sender_logins": None}}}
    sections = {"checks": {"local_domains": {"sender_logins": {"@example.org": ["admin"]}}}}
    assert prune_unknown(sections, schema) == sections
