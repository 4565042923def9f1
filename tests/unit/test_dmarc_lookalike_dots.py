"""A dot or blank look-alike in the From domain (review, thirty-fourth session).

``security@bank<U+2024>test`` (ONE DOT LEADER) shows as bank.test; milterd read the domain up to the
look-alike, "bank", which publishes no policy: p=reject never applied (dmarc=none header.from=bank).  So did
SMALL FULL STOP, DOT ABOVE and blanks that are not ASCII after a dot (U+00A0, U+202F, U+3000); one first
named no domain at all.  Such a domain is now read as a browser maps it too (bank.test), and failed under the
quarantine policy when no stricter one applies.  Junk after a domain (``bank.example!``) is still no matter.
"""

from __future__ import annotations

import pytest

from milterd.checks.dkim import SignatureResult
from milterd.checks.dmarc import from_domains, obscured
from milterd.dns import domain_name
from milterd.message.model import Action

from .test_dmarc_review import ATTACKER_SIGNED, POLICIES, run_dmarc

LOOKALIKES = ["bank\u2024example", "bank\ufe52example", "bank\u02d9example", "bank.\u00a0example", "bank.\u202fexample",
              "bank.\u3000example", "\u2024bank.example", "login\u2024bank.example"]


@pytest.mark.parametrize("domain", LOOKALIKES)
def test_a_look_alike_gets_the_shown_domains_reject(domain: str) -> None:
    [hit], envelope = run_dmarc([f"Bank Security <security@{domain}>".encode()], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT), domain
    assert "bank.example" in str(hit.reply)


@pytest.mark.parametrize("domain", LOOKALIKES)
def test_a_look_alike_obscures_its_domain(domain: str) -> None:
    assert obscured(domain)
    assert any(d.endswith("bank.example") for d in from_domains([f"security@{domain}"]))


def test_a_look_alike_of_a_domain_of_no_policy_is_held() -> None:
    [hit], envelope = run_dmarc(["security@other\u2024example".encode()], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_QUARANTINE", Action.QUARANTINE)
    assert "no domain holds" in envelope.check_state("dmarc")["result"].reason


@pytest.mark.parametrize("value", ["security@bank.example!", "Bank <security@bank.example>\u00a0(Bank)", "security@bank.example John",
                                   "Jürgen\u00a0Müller <j@bücher.example>", "security@bank.example"])
def test_junk_after_a_domain_and_real_names_are_no_look_alikes(value: str) -> None:
    [hit], _ = run_dmarc([value.encode()], {**POLICIES, "_dmarc.xn--bcher-kva.example": "v=DMARC1; p=none"}, ATTACKER_SIGNED)
    assert hit.symbol in ("DMARC_FAIL_REJECT", "DMARC_FAIL_NONE") and "no domain holds" not in str(hit.detail), value
    assert from_domains([value])[-1] in ("bank.example", "xn--bcher-kva.example")


# --- second look -----------------------------------------------------------------------------------
SECOND_LOOK = ["bank\u00b7example", "bank\u2027example", "bank\u0701example", "bank\u0387example", "bank\u06d4example",
               "bank\u30fbexample", "bank\u2022example", "bank\u1427example", "bank\u2009.example", "bank\u00a0.example",
               "bank\u3000.example"]


@pytest.mark.parametrize("domain", SECOND_LOOK)
def test_a_dot_look_alike_idna_makes_one_label_of_still_gets_the_reject(domain: str) -> None:
    # UTS #46 keeps U+00B7, U+2027, U+0701 … as valid: the domain was one IDN label of no policy (DMARC_NONE).
    [hit], _ = run_dmarc([f"Bank Security <security@{domain}>".encode()], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT), domain


@pytest.mark.parametrize("value", ["=?utf-8?q?security@bank=2Eexample?=", "=?utf-8?q?security@bank=E2=80=A4example?=",
                                   "=?utf-8?q?security@b=61nk.example?="])
def test_an_encoded_word_address_with_an_at_sign_in_its_raw_text_is_read_decoded(value: str) -> None:
    # Read raw, the domain ended at "=": "bank" (or "b"), of no policy.
    [hit], _ = run_dmarc([value.encode()], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT), value


def test_an_encoded_look_alike_of_a_domain_of_no_policy_is_held() -> None:
    [hit], _ = run_dmarc([b"=?utf-8?q?security@other=E2=80=A4example?="], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_QUARANTINE", Action.QUARANTINE)


@pytest.mark.parametrize("value", ["taro@example.com\u3000\u5c71\u7530", "info@example.com\u00a0Sales", "Col\u00b7legi <info@col\u00b7legi.cat>",
                                   "\u30b8\u30a7\u30fc\u30d4\u30fc <a@\u30b8\u30a7\u30fc\u30d4\u30fc\u30fb\u30c6\u30b9\u30c8.jp>"])
def test_names_after_an_address_and_real_idn_dots_are_not_held(value: str) -> None:
    # A name written after the address (a blank that is not ASCII, then a word) ends the domain; IDNA2008 takes
    # col·legi.cat's and a Katakana domain's middle dots.
    [hit], _ = run_dmarc([value.encode()], POLICIES, ATTACKER_SIGNED)
    assert hit.symbol == "DMARC_NONE", (value, hit)
    assert not any(obscured(address.rpartition("@")[2]) for address in [value.split("<")[-1].rstrip(">")])


# --- third look --------------------------------------------------------------------------------------------
THIRD_LOOK = ["bank\ua78fexample", "bank\u0660example", "bank\u06f0example", "bank\u0f0bexample", "bank\u02d1example",
              "bank\u0971example", "bank\u2218example", "bank\u2299example", "bank\u00b0example", "bank\u25e6example"]


@pytest.mark.parametrize("domain", THIRD_LOOK)
def test_a_character_idna_takes_or_no_category_caught_between_letters_still_gets_the_reject(domain: str) -> None:
    # U+A78F (a Latin letter of no case), U+06F0 (a digit), U+0F0B (Tibetan tsheg) … IDNA2008 takes as a label's, and
    # symbols (U+2218, U+00B0) stopped the reading with no look-alike seen: DMARC_NONE.
    [hit], _ = run_dmarc([f"Bank Security <security@{domain}>".encode()], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT), domain


@pytest.mark.parametrize("value", ["Col\u00b7legi <info@col\u00b7legi.cat>", "a@stra\u00dfe.example", "a@\u00e9cole.example",
                                   "a@i\u2764.example", "a@\u4f8b\u3048.example", "a@bank.example\u3010Bank\u3011"])
def test_latin_words_catalan_emoji_and_cjk_domains_are_not_held(value: str) -> None:
    [hit], _ = run_dmarc([value.encode()], POLICIES, ATTACKER_SIGNED)
    assert "no domain holds" not in str(hit.detail) and hit.action is None, (value, hit)


def test_a_huge_from_domain_is_not_remembered() -> None:
    assert not obscured("x" * 100_000 + "\u00e9")  # judged; IDNA2008 not asked of a name no domain can be


# --- a quick look at the third --------------------------------------------------------------------------------
@pytest.mark.parametrize("domain", ["1\u5bf91.com", "1\ub3001.kr", "1\u5bfe1.jp", "hawai\u02bbi.org", "i\u2764ny.ws", "a\u30fcb.jp"])
def test_letters_and_emoji_between_ascii_are_domains_of_their_own(domain: str) -> None:
    # 1对1.com, hawaiʻi.org: letters of no case (and emoji) between ASCII letters were held as obscured.
    own = domain_name(domain)
    assert own is not None
    [hit], _ = run_dmarc([f"Me <me@{domain}>".encode()], {f"_dmarc.{own}": "v=DMARC1; p=none"}, [SignatureResult(own, "s", "pass")])
    assert hit.symbol == "DMARC_PASS", (domain, hit)


@pytest.mark.parametrize("domain", ["bank\ua78f\ufe00example", "bank\ua78f\u034fexample", "bank\u1427\ufe0fexample"])
def test_a_character_uts46_ignores_does_not_hide_a_look_alike(domain: str) -> None:
    [hit], _ = run_dmarc([f"Sec <security@{domain}>".encode()], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT), domain


# --- empty labels (review, thirty-sixth session) -----------------------------------------------------
@pytest.mark.parametrize("value", ["security@.bank.example", "Bank Security <security@bank..example>", "security@...bank.example",
                                   '"security"@.bank.example', "security@bank.example..x"])
def test_a_from_domain_with_an_empty_label_gets_the_shown_domains_reject(value: str) -> None:
    # IDNA refuses ".bank.example" and "bank..example": no domain was judged (DMARC_NONE, "no From domain") and
    # a forgery of a p=reject domain was delivered with HDR_FROM_INVALID's 2 points.
    [hit], _ = run_dmarc([value.encode()], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT), value
    assert "bank.example" in str(hit.reply)


@pytest.mark.parametrize("domain", ["bank\u3002\u3002example", "bank\uff0e\uff0eexample", "bank.\u2024example", "bank.\ufe52example",
                                    "bank\uff61\uff61example", "bank\u3002example\u3002\u3002x"])
def test_a_look_alike_dot_beside_a_dot_gets_the_shown_domains_reject(domain: str) -> None:
    # The look-alikes mapped to dots made an empty label ("bank..example"): no domain judged, only the obscured
    # domain's quarantine (a second look at the fix above).
    [hit], _ = run_dmarc([f"Bank Security <security@{domain}>".encode()], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT), domain
