"""The categoriser's prefilter (app.categories.prefilter): gates, prompt forms, ASCII forms."""

from __future__ import annotations

import random
import re

import pytest

from app.categories.categoriser import Categoriser, CategoryRule
from app.categories.prefilter import Gate, Text, ascii_form, gates_for

TRICKY_PATTERNS = [
    "\\d+apples\\b",
    "apples\\d+",
    "(?:x|y)+boom",
    "[a-z]+ing\\b",
    "\\bfoo(?=bar)",
    "\\bfoo(?!bar)\\w",
    "(?<![a-z])bar\\b",
    "\\bcolou?rs?\\b",
    "\\bc\\+\\+(?![\\w+#])",
    "e\\.g\\.",
    "\\bthe (cat|dog)s?\\b",
    "^\\W*(hi|hey)\\W*$",
    "\\?\\W*$",
    "[+*^]\\s*\\d",
    "\\b(sing|ring)\\b[^.]{0,10}\\bbar\\b",
    "_under_score\\b",
    "\\bstr[aeiou]ss?\\b",
    "foo(?:bar\\b|baz\\d)",
    "\\Bbar\\b",
    "\u017ftress",  # long s: matches "stress" when ignoring case
    "\u212aey\\b",  # Kelvin sign: matches "key"
]
FRAGMENTS = (
    "12 apples x y boom sing ing ring foo bar baz c++ c + * ^ 7 e.g. the cat dog s colour "
    "color . ? ! hi hey _under_score under score stress stres ſtress İ ı K \u212a é key KEY"
)


def random_texts(seed: str, *, ascii_only: bool = False) -> list[str]:
    rng = random.Random(seed)
    fragments = [f for f in FRAGMENTS.split() if f.isascii() or not ascii_only]
    return [
        "".join(
            rng.choice(fragments) + rng.choice(("", "", " ", "\n", "-", "'"))
            for _ in range(rng.randint(1, 8))
        )
        for _ in range(1_500)
    ]


@pytest.mark.parametrize("pattern", TRICKY_PATTERNS)
def test_prefilter_never_changes_an_answer(pattern: str) -> None:
    fast = Categoriser([CategoryRule("hit", (pattern,))])
    slow = Categoriser([CategoryRule("hit", (pattern,))], prefilter=False)
    texts = random_texts(pattern)
    hits = [text for text in texts if slow.categorise(text) == "hit"]
    assert [t for t in texts if fast.categorise(t) != slow.categorise(t)] == []
    assert hits, "the texts never match: the comparison would prove nothing"


@pytest.mark.parametrize("pattern", TRICKY_PATTERNS)
def test_every_gate_admits_every_text_the_pattern_matches(pattern: str) -> None:
    gates = gates_for(pattern)
    regex = re.compile(pattern, re.IGNORECASE)
    texts = random_texts(pattern)
    matched = [text for text in texts if regex.search(text)]
    assert matched, "the texts never match: the check would prove nothing"
    turned_away = [t for t in matched if not all(g.admits(Text.of(t)) for g in gates)]
    assert turned_away == []
    if gates:  # a gate that admits everything would be no prefilter at all
        assert any(not all(g.admits(Text.of(t)) for g in gates) for t in texts)


@pytest.mark.parametrize("pattern", TRICKY_PATTERNS)
def test_the_ascii_form_finds_what_the_pattern_finds(pattern: str) -> None:
    form = ascii_form(pattern)
    if form is None:
        return  # searched as written: nothing to compare
    exact, fast = re.compile(pattern, re.IGNORECASE), re.compile(form, re.ASCII)
    texts = random_texts(pattern, ascii_only=True)
    texts += [t.upper() for t in texts[:300]]
    found = [t for t in texts if exact.search(t)]
    assert found, "the texts never match: the comparison would prove nothing"
    assert [t for t in texts if bool(fast.search(t.lower())) != bool(exact.search(t))] == []


def test_words_become_whole_word_gates() -> None:
    (gate,) = gates_for(r"\bsummar(?:ize|y)\b")
    assert gate == Gate(frozenset({"summarize", "summary"}), ())
    assert gate.admits(Text.of("Please SUMMARIZE this."))
    assert gate.admits(Text.of("a summary, please"))
    assert not gate.admits(Text.of("summarizes the text"))  # not the whole word
    assert not gate.admits(Text.of("hello there"))


def test_strings_without_word_edges_become_needles() -> None:
    (gate,) = gates_for(r"\bc\+\+(?![\w+#])")
    assert gate.words == frozenset()
    assert gate.needles == (("+", "c++"),)  # probed first by its rarest character
    assert gate.admits(Text.of("port this C++ code"))
    assert not gate.admits(Text.of("port this C code"))


def test_at_most_three_gates_cheapest_first() -> None:
    gates = gates_for(r"\bfoo\b.*\bbar\b.*\bbazz\b.*\bquux\b")
    assert [set(gate.words) for gate in gates] == [{"bazz"}, {"quux"}, {"foo"}]
    text = Text.of("foo and bar, then bazz, then quux")
    assert all(gate.admits(text) for gate in gates)
    assert not all(gate.admits(Text.of("foo bar bazz")) for gate in gates)  # no quux


@pytest.mark.parametrize(
    "pattern",
    [
        r"^hi",  # tried at the start only: cheaper than any prefilter
        r"\Ahello",
        r"(?a)\bfoo\b",  # ASCII \b splits words where the prompt's words do not
        r"\w+",  # no fixed string at all
        r"foo|\w+",  # a branch that needs none of them
        r"[a-z]{2,}\d",
    ],
)
def test_patterns_without_a_useful_gate_get_none(pattern: str) -> None:
    assert gates_for(pattern) == ()


def test_a_gate_admits_by_word_or_by_needle() -> None:
    gate = Gate(frozenset({"poem"}), (("#", "c#"),))
    assert gate.admits(Text.of("Write a POEM"))
    assert gate.admits(Text.of("in c# please"))
    assert not gate.admits(Text.of("poems in c"))
    assert not Gate(frozenset(), ()).admits(Text.of("anything"))


def test_text_of_ascii_lowers_and_splits_words_as_re_does() -> None:
    text = Text.of("Hello, World_x 42!\tc++")
    assert text.window == "Hello, World_x 42!\tc++"
    assert text.lowered == "hello, world_x 42!\tc++"
    assert text.words == frozenset({"hello", "world_x", "42", "c"})
    assert text.words == frozenset(re.findall(r"\w+", text.lowered))


def test_text_of_unicode_folds_as_case_insensitive_re_does() -> None:
    text = Text.of("Straße \u017ftress CLASS\u0130FY cla\u0131ss Über")
    # The long s, the dotted capital I and the dotless i match s and i ignoring case.
    assert text.lowered == "straße stress classify claiss über"
    assert text.words == frozenset({"straße", "stress", "classify", "claiss", "über"})
    assert re.search("stress", text.window, re.IGNORECASE)


@pytest.mark.parametrize(
    ("pattern", "form"),
    [
        (r"\bfoo\w*", "foo(?<!\\wfoo)\\w*"),  # a leading word re can jump to
        (r"\bcolou?r", "colo(?<!\\wcolo)u?r"),  # the quantifier keeps its letter
        (r"\bsummar(?:ize|y)\b", "summar(?<!\\wsummar)(?:ize|y)\\b"),
        (r"[a-z]+ing\b", r"[a-z]+ing\b"),
        (r"x\d", r"x\d"),
    ],
)
def test_ascii_forms(pattern: str, form: str) -> None:
    assert ascii_form(pattern) == form


@pytest.mark.parametrize(
    "pattern",
    [
        "(?-i:Foo)",  # case-sensitive upper case: the lowered text no longer has it
        "[A-Z]",
        "Key",
        "\u212aey",  # the Kelvin sign matches k ignoring case
        "\u017ftress",  # the long s matches s
        "[\u0130]",
    ],
)
def test_no_ascii_form_where_lower_casing_would_change_the_answer(pattern: str) -> None:
    assert ascii_form(pattern) is None
