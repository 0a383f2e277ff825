"""The prompt categoriser behind the ``category`` label: rules, order, limits, validation."""

from __future__ import annotations

import json
import random
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from app.categories.categoriser import MAX_CATEGORIES, Categoriser, CategoryRule

DEFAULT_ORDER = (
    "chat",
    "code",
    "creative",
    "summarize",
    "translate",
    "extraction",
    "classification",
    "math",
    "analysis",
    "question",
    "other",
)


@pytest.fixture(scope="module")
def categoriser() -> Categoriser:
    return Categoriser.default()


@pytest.fixture(scope="module")
def reference() -> Categoriser:
    """The default rules with every pattern searched as written: no prefilter, no ASCII form."""
    text = resources.files("app.categories").joinpath("rules.json").read_text("utf-8")
    data = json.loads(text)
    rules = [CategoryRule(c["name"], tuple(c["patterns"])) for c in data["categories"]]
    return Categoriser(rules, fallback=data["fallback"], prefilter=False)


def write_rules(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def rules_file(tmp_path: Path, categories: list[Any], **extra: Any) -> Path:
    return write_rules(tmp_path / "rules.json", {"categories": categories, **extra})


# --- the default rules -----------------------------------------------------------------

REALISTIC = [
    ("hi", "chat"),
    ("Hello there!", "chat"),
    ("thanks so much!", "chat"),
    ("How are you today?", "chat"),
    ("Hey, how's it going?", "chat"),
    ("ok", "chat"),
    ("who are you?", "chat"),
    ("```python\nprint('x')\n```\nwhat does this do?", "code"),
    ("Traceback (most recent call last):\n  File \"x.py\", line 3\nKeyError: 'a'", "code"),
    ("Write a Python function that checks whether a string is a palindrome.", "code"),
    ("How do I reverse a list in Python?", "code"),
    ("Write a regex that matches email addresses", "code"),
    ("Write a SQL query to find the top 5 customers by revenue", "code"),
    ("Can you fix this bug? My loop never ends.", "code"),
    ("Exception in thread main java.lang.NullPointerException at Foo.bar", "code"),
    ("Explain the time complexity of quicksort", "code"),
    ("Write a poem about autumn leaves", "creative"),
    ("Tell me a joke about cats", "creative"),
    ("Write a short story about a robot who learns to paint", "creative"),
    ("Imagine a world where the internet was never invented.", "creative"),
    ("Write a haiku about Python", "creative"),
    (
        "Summarize the following article: The central bank raised rates by half a point.",
        "summarize",
    ),
    ("tl;dr of this thread please", "summarize"),
    ("What are the key points of this report?", "summarize"),
    ("Explain the plot of Hamlet in 3 sentences", "summarize"),
    ("Translate 'good morning' into Spanish", "translate"),
    ("How do you say thank you in Japanese?", "translate"),
    ("English to German: where is the train station?", "translate"),
    ("Translate this summary into Italian", "translate"),
    ("Extract all email addresses from the text below", "extraction"),
    ("Parse this invoice into JSON with fields vendor, total, date", "extraction"),
    ("List all the names mentioned in this paragraph", "extraction"),
    ("Classify the following support ticket as billing, technical or other", "classification"),
    ("What is the sentiment of this tweet: I love it!", "classification"),
    ("Is this email spam? You won $1000", "classification"),
    ("Label the following sentences as positive or negative", "classification"),
    ("Solve for x: 2x + 3 = 11", "math"),
    ("What is 17 * 23?", "math"),
    ("Calculate the compound interest on $1000 at 5% for 3 years", "math"),
    ("Find the integral of x^2 from 0 to 1", "math"),
    ("what's 15% of 80", "math"),
    ("What is 100 - 37?", "math"),
    ("Compare renewable energy policies in Germany and Japan", "analysis"),
    ("Analyze this quarterly sales data and identify trends", "analysis"),
    ("Review this essay and suggest improvements", "analysis"),
    ("Tesla vs Toyota: which is the better investment?", "analysis"),
    ("What is the capital of Australia?", "question"),
    ("Why is the sky blue?", "question"),
    ("Explain how vaccines work", "question"),
    ("who wrote pride and prejudice", "question"),
    ("Rewrite this email so it sounds more polite.", "other"),
    ("Make this paragraph more formal.", "other"),
]

# Cases where a tempting keyword must not decide, and where two rules compete.
PRIORITY = [
    # Code first: the content decides the workload, whatever is asked of it.
    ("Summarize this code: function add(a, b) { return a + b; }", "code"),
    ("Translate this Python to Go: def double(x): return x * 2", "code"),
    ("Write a unit test for this function and summarize what it covers", "code"),
    # Creative before summarize and translate: the length or language is a constraint.
    ("Write a poem in 50 words about the sea", "creative"),
    ("Write a story in French about a lost dog", "creative"),
    # Summarize before translate and extraction.
    ("Summarize this in French: the meeting moved to Thursday.", "summarize"),
    ("Extract the key points from this report", "summarize"),
    # Classification before analysis, although a review is mentioned.
    ("Classify the sentiment of this review", "classification"),
    # Math before analysis and question.
    ("Evaluate the integral of sin(x) from 0 to pi", "math"),
    # Analysis before question.
    ("What are the pros and cons of remote work?", "analysis"),
    # Chat only for whole short small talk.
    ("Thanks! What's the capital of Peru?", "question"),
    ("Hi, can you write a Python script that renames my photos?", "code"),
    # Look-alikes that are not the category.
    ("What is the function of the liver?", "question"),
    ("How much vanilla extract goes in a cake?", "question"),
    ("Our team is an integral part of the company. Thoughts?", "question"),
    ("What is a SWIFT code?", "question"),
    ("What is the capital of France? Answer in English.", "question"),
    ("I need to polish my resume", "other"),
    ("Support is open 24/7; see pages 10 - 20", "other"),
    ("Create a class schedule for my students", "other"),
    ("Write a 12-week training program for a marathon", "other"),
    # A keyword inside a longer word is not the keyword.
    ("the presummary of events", "other"),
    ("a subtraceback", "other"),
    ("antisentiment campaigns", "other"),
    ("Summary: the presummary of events", "other"),
]


@pytest.mark.parametrize(("prompt", "expected"), REALISTIC)
def test_realistic_prompts(categoriser: Categoriser, prompt: str, expected: str) -> None:
    assert categoriser.categorise(prompt) == expected


@pytest.mark.parametrize(("prompt", "expected"), PRIORITY)
def test_priority_between_rules(categoriser: Categoriser, prompt: str, expected: str) -> None:
    assert categoriser.categorise(prompt) == expected


def test_the_table_covers_every_category() -> None:
    assert {expected for _, expected in REALISTIC} == set(DEFAULT_ORDER)


def test_default_categories_in_priority_order(categoriser: Categoriser) -> None:
    assert categoriser.categories == DEFAULT_ORDER
    assert categoriser.fallback == "other"


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n", "\u2003\u00a0"])
def test_empty_or_blank_text_is_the_fallback(categoriser: Categoriser, text: str) -> None:
    assert categoriser.categorise(text) == "other"


def test_case_does_not_matter(categoriser: Categoriser) -> None:
    assert categoriser.categorise("TRANSLATE THIS INTO FRENCH") == "translate"
    assert categoriser.categorise("sUmMaRiZe ThIs") == "summarize"


def test_line_breaks_count_as_spaces(categoriser: Categoriser) -> None:
    assert categoriser.categorise("Please write\na\n\n   poem about rain") == "creative"


# --- long prompts: only the start and the end are read ---------------------------------

FILLER = "The committee met on Thursday and agreed on the budget for the coming season. "


def megabyte() -> str:
    return FILLER * (1_000_000 // len(FILLER) + 1)


def test_megabyte_prompt_is_categorised_by_its_start(categoriser: Categoriser) -> None:
    assert categoriser.categorise("Summarize the following report.\n\n" + megabyte()) == (
        "summarize"
    )


def test_megabyte_prompt_is_categorised_by_its_end(categoriser: Categoriser) -> None:
    text = megabyte() + "\n\nTranslate the text above into German."
    assert len(text) > 1_000_000
    assert categoriser.categorise(text) == "translate"


def test_instruction_in_the_middle_of_a_long_prompt_is_not_read(
    categoriser: Categoriser,
) -> None:
    half = megabyte()[:600_000]
    assert categoriser.categorise(half + " Translate this into German. " + half) == "other"


def test_window_is_max_chars_at_the_start_and_tail_chars_at_the_end() -> None:
    categoriser = Categoriser(
        [CategoryRule("hit", ("needle",))], max_chars=100, tail_chars=20, prefilter=True
    )
    pad = "x" * 300
    assert categoriser.categorise("a" * 94 + "needle" + pad) == "hit"  # ends at 100
    assert categoriser.categorise("a" * 95 + "needle" + pad) == "other"  # crosses 100
    assert categoriser.categorise(pad + "needle" + "b" * 14) == "hit"  # in the last 20
    assert categoriser.categorise(pad + "needle" + "b" * 15) == "other"  # starts before


def test_the_cut_between_start_and_end_does_not_join_words() -> None:
    categoriser = Categoriser([CategoryRule("hit", ("foobar",))], max_chars=10, tail_chars=3)
    assert categoriser.categorise("x" * 7 + "foo" + "y" * 50 + "bar") == "other"


def test_short_text_is_read_whole() -> None:
    categoriser = Categoriser([CategoryRule("hit", ("needle",))], max_chars=100, tail_chars=20)
    assert categoriser.categorise("a" * 110 + "needle") == "hit"  # 116 <= 100 + 20


# --- custom rules ---------------------------------------------------------------------


def test_rules_from_a_file(tmp_path: Path) -> None:
    path = rules_file(
        tmp_path,
        [
            {"name": "billing", "description": "money", "patterns": ["\\binvoice\\b", "refund"]},
            {"name": "support_2", "patterns": ["\\bpassword\\b"]},
        ],
        fallback="misc",
    )
    categoriser = Categoriser.from_file(path)
    assert categoriser.categories == ("billing", "support_2", "misc")
    assert categoriser.categorise("Where is my INVOICE?") == "billing"
    assert categoriser.categorise("I forgot my password") == "support_2"
    assert categoriser.categorise("Nice weather") == "misc"
    assert Categoriser.from_file(str(path)).categories == categoriser.categories


def test_fallback_defaults_to_other(tmp_path: Path) -> None:
    path = rules_file(tmp_path, [{"name": "x", "patterns": ["x"]}])
    assert Categoriser.from_file(path).categories == ("x", "other")


def test_the_first_listed_category_wins(tmp_path: Path) -> None:
    first = [{"name": "alpha", "patterns": ["report"]}, {"name": "beta", "patterns": ["sales"]}]
    text = "the sales report"
    assert Categoriser.from_file(rules_file(tmp_path, first)).categorise(text) == "alpha"
    second = list(reversed(first))
    assert Categoriser.from_file(rules_file(tmp_path, second)).categorise(text) == "beta"


def test_patterns_with_upper_case_letters_still_ignore_case() -> None:
    categoriser = Categoriser([CategoryRule("trace", ("Traceback", "[A-Z]{3}-\\d+"))])
    assert categoriser.categorise("traceback follows") == "trace"
    assert categoriser.categorise("see ticket abc-12") == "trace"


def test_a_case_sensitive_group_stays_case_sensitive() -> None:
    categoriser = Categoriser([CategoryRule("name", ("(?-i:Go)\\b",))])
    assert categoriser.categorise("written in Go") == "name"
    assert categoriser.categorise("let it go") == "other"


def test_an_empty_rule_list_gives_only_the_fallback(tmp_path: Path) -> None:
    categoriser = Categoriser.from_file(rules_file(tmp_path, []))
    assert categoriser.categories == ("other",)
    assert categoriser.categorise("anything") == "other"


# --- validation: every error names the file and what is wrong --------------------------


def load_error(path: Path) -> str:
    with pytest.raises(ValueError, match=re.escape(str(path))) as caught:
        Categoriser.from_file(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot read the category rules" in load_error(tmp_path / "nope.json")


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text('{"categories": [', encoding="utf-8")
    assert "not valid JSON" in load_error(path)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], "the top level must be an object"),
        ({"categories": {}}, "'categories' must be a list"),
        ({}, "'categories' must be a list"),
        ({"categories": [], "fallback": 3}, "'fallback' must be a string"),
        ({"categories": [], "colour": "red"}, "unknown key(s) 'colour' in the top level"),
        ({"categories": ["code"]}, "category #1 must be an object"),
        ({"categories": [{"name": "code"}]}, "category 'code' needs a string 'name'"),
        ({"categories": [{"patterns": ["x"]}]}, "category #1 needs a string 'name'"),
        ({"categories": [{"name": "a", "patterns": [1]}]}, "category 'a': pattern 1 is not"),
        (
            {"categories": [{"name": "a", "patterns": ["x"], "pattern": "y"}]},
            "unknown key(s) 'pattern' in category 'a'",
        ),
    ],
)
def test_malformed_rules(tmp_path: Path, data: Any, expected: str) -> None:
    assert expected in load_error(write_rules(tmp_path / "rules.json", data))


def test_invalid_regular_expression(tmp_path: Path) -> None:
    path = rules_file(tmp_path, [{"name": "code", "patterns": ["ok", "(unclosed"]}])
    message = load_error(path)
    assert "category 'code', pattern '(unclosed': invalid regular expression" in message
    assert "missing )" in message


def test_global_flag_in_the_middle_is_rejected(tmp_path: Path) -> None:
    path = rules_file(tmp_path, [{"name": "code", "patterns": ["a(?i)b"]}])
    assert "pattern 'a(?i)b': invalid regular expression" in load_error(path)


@pytest.mark.parametrize("pattern", ["(?P<word>x)", "(a)\\1", "(?P<w>a)(?P=w)", "(a)?(?(1)b|c)"])
def test_group_names_and_references_are_rejected(tmp_path: Path, pattern: str) -> None:
    path = rules_file(tmp_path, [{"name": "code", "patterns": [pattern]}])
    message = load_error(path)
    assert f"pattern {pattern!r}: named groups and group references are not supported" in message


def test_empty_pattern(tmp_path: Path) -> None:
    path = rules_file(tmp_path, [{"name": "code", "patterns": [""]}])
    assert "category 'code', pattern '': a pattern must not be empty" in load_error(path)


def test_category_without_patterns(tmp_path: Path) -> None:
    path = rules_file(tmp_path, [{"name": "code", "patterns": []}])
    assert "category 'code' has no patterns" in load_error(path)


def test_duplicate_category(tmp_path: Path) -> None:
    twice = [{"name": "code", "patterns": ["a"]}, {"name": "code", "patterns": ["b"]}]
    assert "duplicate category 'code'" in load_error(rules_file(tmp_path, twice))


@pytest.mark.parametrize(
    "name", ["Code", "1code", "code-review", "", "a" * 33, "café", "code\n", "_code", "co de"]
)
def test_bad_category_name(tmp_path: Path, name: str) -> None:
    path = rules_file(tmp_path, [{"name": name, "patterns": ["x"]}])
    message = load_error(path)
    assert f"category name {name!r} is not a valid label value" in message
    assert "^[a-z][a-z0-9_]{0,31}$" in message


def test_longest_allowed_name(tmp_path: Path) -> None:
    name = "a" + "b" * 31
    path = rules_file(tmp_path, [{"name": name, "patterns": ["x"]}])
    assert Categoriser.from_file(path).categories == (name, "other")


def test_bad_fallback_name(tmp_path: Path) -> None:
    path = rules_file(tmp_path, [{"name": "a", "patterns": ["x"]}], fallback="Other")
    assert "fallback 'Other' is not a valid label value" in load_error(path)


def test_fallback_that_is_also_a_category(tmp_path: Path) -> None:
    path = rules_file(tmp_path, [{"name": "other", "patterns": ["x"]}])
    assert "the fallback 'other' is also listed as a category" in load_error(path)


def many(count: int) -> list[dict[str, Any]]:
    return [{"name": f"c{index}", "patterns": [f"\\bword{index}\\b"]} for index in range(count)]


def test_at_most_fifty_categories_including_the_fallback(tmp_path: Path) -> None:
    assert MAX_CATEGORIES == 50
    fits = Categoriser.from_file(rules_file(tmp_path, many(49)))
    assert len(fits.categories) == 50
    assert fits.categorise("say word48 now") == "c48"
    message = load_error(rules_file(tmp_path, many(50)))
    assert "at most 50 categories" in message
    assert "got 51" in message


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError, match="category rules: duplicate category 'a'"):
        Categoriser([CategoryRule("a", ("x",)), CategoryRule("a", ("y",))])
    with pytest.raises(ValueError, match="max_chars must be at least 1"):
        Categoriser([], max_chars=0)


def test_default_rules_are_valid_and_documented() -> None:
    text = resources.files("app.categories").joinpath("rules.json").read_text("utf-8")
    data = json.loads(text)
    assert [c["name"] for c in data["categories"]] + [data["fallback"]] == list(DEFAULT_ORDER)
    assert all(c["description"] for c in data["categories"])


# --- bounded output, and the fast path gives the reference answers ---------------------

WORDS = (
    "the a of to and please write summarize translate into french code python function bug "
    "poem story list all names emails classify sentiment review compare pros cons solve "
    "integral what why how is this key points extract json hello thanks vs table report "
    "data english german 42 3.5 + * = ? ! , . : ; ( ) ``` tl;dr x^2 c++ c# ſ K İ ı é 中文 😀"
)
VOCABULARY = WORDS.split()


def random_prompt(rng: random.Random, serial: int) -> str:
    count = rng.choice((1, 2, 3, 5, 8, 13, 40, 120, 600))
    words = [rng.choice(VOCABULARY) for _ in range(count)]
    words.insert(rng.randrange(len(words) + 1), f"#{serial}")  # makes each prompt unique
    # "" glues words together, so that word boundaries get tested too.
    separators = (" ", " ", " ", "\n", "  ", "\t", "", "-")
    return "".join(word + rng.choice(separators) for word in words)


def test_ten_thousand_random_prompts_stay_within_the_categories(
    categoriser: Categoriser,
) -> None:
    rng = random.Random(1234)
    prompts = {random_prompt(rng, serial) for serial in range(10_000)}
    assert len(prompts) == 10_000
    seen = {categoriser.categorise(prompt) for prompt in prompts}
    assert seen <= set(categoriser.categories)
    assert len(seen) >= 8  # the random text does reach most rules


def test_prefilter_and_ascii_form_give_the_reference_answers(
    categoriser: Categoriser, reference: Categoriser
) -> None:
    rng = random.Random(99)
    prompts = [prompt for prompt, _ in REALISTIC + PRIORITY]
    prompts += [random_prompt(rng, serial) for serial in range(1_500)]
    prompts += [prompt.upper() for prompt in prompts[:200]]
    differing = [p for p in prompts if categoriser.categorise(p) != reference.categorise(p)]
    assert differing == []


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        # re's case-insensitive matching equates these with s, i and k; so must the prefilter.
        ("\u017fummarize this", "summarize"),  # long s
        ("CLASS\u0130FY these tickets", "classification"),  # dotted capital I
        ("classıfy these tickets", "classification"),  # dotless i
        ("the \u212aey points, please", "summarize"),  # Kelvin sign
        ("Übersetze bitte: translate this into English", "translate"),
    ],
)
def test_unicode_case_folding(
    categoriser: Categoriser, reference: Categoriser, prompt: str, expected: str
) -> None:
    assert reference.categorise(prompt) == expected
    assert categoriser.categorise(prompt) == expected
