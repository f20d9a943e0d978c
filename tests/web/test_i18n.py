"""The catalogue is complete in both languages and every string the page uses is in it."""

from __future__ import annotations

import re
import string
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import agent.web
from agent.web.i18n import CATALOGUE, LANGS, negotiate, t


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_key_has_both_languages_with_the_same_placeholders() -> None:
    for key, (vi, en) in CATALOGUE.items():
        assert vi.strip() and en.strip(), key
        assert _fields(vi) == _fields(en), key


def test_vietnamese_strings_are_vietnamese() -> None:
    # A copy-paste of the English into the Vietnamese column is the likely mistake.
    allowed = {"chart_title", "command_value"}  # only placeholders and punctuation
    same = {k for k, (vi, en) in CATALOGUE.items() if vi == en}
    assert same <= allowed


def test_every_key_used_in_the_code_exists_and_none_is_dead() -> None:
    src = "".join(p.read_text(encoding="utf-8") for p in Path(agent.web.__file__).parent.glob("*.py"))
    used = set(re.findall(r"""\bt\(\s*[\w.]+(?:\([\w.]*\))?,\s*["']([a-z_]+)["']""", src))
    # Keys chosen at run time (state names, error pages): listed where they are chosen.
    used |= set(re.findall(r"""["']((?:col|state|uplink|not|bad)_[a-z_]+)["']""", src))
    assert used - set(CATALOGUE) == set()
    assert set(CATALOGUE) - used == set()


def test_negotiation_order() -> None:
    assert negotiate("en", "vi", "vi", "vi") == "en"
    assert negotiate(None, "en", "vi", "vi") == "en"
    assert negotiate("xx", None, "fr-FR, en-GB;q=0.8, vi;q=0.5", "vi") == "en"
    assert negotiate(None, None, "vi-VN,vi;q=0.9,en;q=0.1", "en") == "vi"
    assert negotiate(None, None, "en;q=0, fr", "vi") == "vi"
    assert negotiate(None, None, "de, *;q=0.5", "en") == "en"
    assert negotiate(None, None, None, "vi") == "vi"


@given(st.one_of(st.none(), st.text(max_size=10)), st.one_of(st.none(), st.text(max_size=10)),
       st.one_of(st.none(), st.text(max_size=200)), st.sampled_from(LANGS))
def test_negotiation_always_picks_a_supported_language(q: str | None, c: str | None, al: str | None,
                                                       default: str) -> None:
    assert negotiate(q, c, al, default) in LANGS  # type: ignore[arg-type]


def test_t_formats() -> None:
    assert t("vi", "seconds_ago", n=5) == "5 giây trước"
    assert t("en", "seconds_ago", n=5) == "5 s ago"
