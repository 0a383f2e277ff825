"""Prompt categories: the value of the ``category`` label on the request metrics.

The proxy hands the last user message (or the ``prompt``) of each inference request to
:meth:`Categoriser.categorise`, which answers with one short label value such as ``code``
or ``translate``. It runs on the request path, so it must cost microseconds, and its answer
is always one of :attr:`Categoriser.categories`, which keeps the label's cardinality bounded.

Rules file (JSON; the defaults are ``rules.json`` beside this module, a user file
is named by the ``PROMPT_CATEGORY_RULES`` setting)::

    {
      "categories": [
        {"name": "code", "description": "why it is here", "patterns": ["```", "\\\\bdef "]},
        {"name": "summarize", "patterns": ["\\\\bsummar(y|i[sz]e)\\\\b", "\\\\btl;dr\\\\b"]}
      ],
      "fallback": "other"
    }

- Categories are tried in the order listed and the first with a matching pattern wins;
  text that matches none, or is empty, gets ``fallback`` (optional, default ``other``).
- ``name`` and ``fallback`` must match ``^[a-z][a-z0-9_]{0,31}$`` (they become label values);
  at most 50 categories including the fallback, since each is a series per metric and model.
- ``patterns`` are Python regular expressions, searched case-insensitively anywhere in the
  examined text. Runs of whitespace in the text are collapsed to one space first, so a
  space in a pattern stands for any whitespace, line breaks included; ``^`` and ``$`` are
  the start and end of the examined text. Patterns without a prefilter (below) are joined
  into one alternation per category, so none may use group references (``\\1``,
  ``(?P=name)``, ``(?(1)...)``) or named groups.
- ``description`` is optional and ignored: JSON has no comments, and the order needs its
  reasons written down. Any other key is an error, so a misspelt key cannot go unnoticed.

The default order is chat (whole short small talk only), code (the content decides the
workload: "summarize this code" and "translate this Python to Go" are code), creative,
summarize, translate, extraction, classification, math, analysis, question, then other;
each category's ``description`` in the JSON gives the reason for its place.

Only the first ``max_chars`` (2000) and the last ``tail_chars`` (500) characters of a long
text are examined: that bounds the cost of a 1 MB prompt, and the instruction is nearly
always at the start ("Summarize the following: ...") or at the end ("... translate the
above into French").

Speed: most patterns are never searched; see :mod:`app.categories.prefilter` for how.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from app.categories.prefilter import Gate, Text, ascii_form, gates_for

logger = logging.getLogger(__name__)

MAX_CATEGORIES = 50
DEFAULT_MAX_CHARS = 2000
DEFAULT_TAIL_CHARS = 500
DEFAULT_FALLBACK = "other"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

_NAME = re.compile(NAME_PATTERN)
# A group reference (\1, (?P=x), (?(1)a|b)) would point at another pattern's group once
# the patterns of a category share one alternation.
_GROUP_REFERENCE = re.compile(r"(?<!\\)(?:\\\\)*(?:\\[1-9]|\(\?P=|\(\?\()")
_CATEGORY_KEYS = frozenset({"name", "patterns", "description"})
_TOP_KEYS = frozenset({"categories", "fallback"})
# A bytes.translate table: whitespace to space.
_ASCII_WHITESPACE = bytes(
    32 if chr(code) in "\t\n\v\f\r\x1c\x1d\x1e\x1f" else code for code in range(256)
)


@dataclass(frozen=True)
class CategoryRule:
    """One category: its label value and the patterns that select it."""

    name: str
    patterns: tuple[str, ...]


class Categoriser:
    """Maps a prompt to the first category whose patterns match it. Immutable once built."""

    __slots__ = ("_categories", "_fallback", "_matcher", "_max_chars", "_tail_chars")

    def __init__(
        self,
        rules: Sequence[CategoryRule],
        *,
        fallback: str = DEFAULT_FALLBACK,
        max_chars: int = DEFAULT_MAX_CHARS,
        tail_chars: int = DEFAULT_TAIL_CHARS,
        prefilter: bool = True,
        source: str = "category rules",
    ) -> None:
        """Validate and compile ``rules``; ``source`` names them in error messages.

        ``prefilter=False`` searches every pattern in every prompt, as written: the
        reference the tests and the benchmark hold the fast path to.
        """
        if max_chars < 1 or tail_chars < 0:
            raise ValueError("max_chars must be at least 1 and tail_chars at least 0")
        names = _check_names(rules, fallback, source)
        for rule in rules:
            _check_patterns(rule, source)
        self._matcher = _build_matcher(rules, fast=prefilter)
        self._fallback = fallback
        self._categories = (*names, fallback)
        self._max_chars = max_chars
        self._tail_chars = tail_chars

    @classmethod
    def default(
        cls, *, max_chars: int = DEFAULT_MAX_CHARS, tail_chars: int = DEFAULT_TAIL_CHARS
    ) -> Categoriser:
        """The rules shipped with the proxy (``app/categories/rules.json``)."""
        resource = resources.files(__package__).joinpath("rules.json")
        source = f"{__package__}/rules.json"
        return cls._from_json(resource.read_text(encoding="utf-8"), source, max_chars, tail_chars)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        max_chars: int = DEFAULT_MAX_CHARS,
        tail_chars: int = DEFAULT_TAIL_CHARS,
    ) -> Categoriser:
        """Rules from a user's JSON file; every problem is a ``ValueError`` naming the file."""
        source = os.fspath(path)
        try:
            with open(source, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            # One error type for every bad rules file, so startup reports them all alike.
            raise ValueError(f"{source}: cannot read the category rules: {exc}") from exc
        categoriser = cls._from_json(text, source, max_chars, tail_chars)
        logger.info("loaded %d prompt categories from %s", len(categoriser.categories), source)
        return categoriser

    @classmethod
    def _from_json(cls, text: str, source: str, max_chars: int, tail_chars: int) -> Categoriser:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not valid JSON: {exc}") from exc
        rules, fallback = _parse_rules(data, source)
        return cls(
            rules, fallback=fallback, max_chars=max_chars, tail_chars=tail_chars, source=source
        )

    @property
    def categories(self) -> tuple[str, ...]:
        """Every value :meth:`categorise` can return, in priority order, fallback last."""
        return self._categories

    @property
    def fallback(self) -> str:
        return self._fallback

    def categorise(self, text: str) -> str:
        """The first category whose patterns match ``text``, else the fallback."""
        window = self._window(text)
        if not window:
            return self._fallback
        index = self._matcher.first_match(Text.of(window))
        return self._fallback if index is None else self._categories[index]

    def _window(self, text: str) -> str:
        """The examined part of ``text``, whitespace runs collapsed to one space."""
        head, tail = self._max_chars, self._tail_chars
        if len(text) > head + tail:
            # The space keeps a pattern from matching across the cut as if it were one word.
            text = text[:head] + " " + text[len(text) - tail :] if tail else text[:head]
        return _collapse_whitespace(text)


# --- matching ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Regex:
    """A pattern as written (case-insensitive), and as a case-sensitive ASCII pattern for
    the lower-cased text of ASCII prompts when that finds the same: ``re`` cannot jump to a
    fixed prefix while ignoring case, and its Unicode ``\\b`` is slow."""

    exact: re.Pattern[str]
    ascii: re.Pattern[str] | None

    def search(self, text: Text) -> bool:
        if self.ascii is not None and text.window.isascii():
            return self.ascii.search(text.lowered) is not None
        return self.exact.search(text.window) is not None


@dataclass(frozen=True)
class _Pattern:
    category: int
    regex: _Regex
    more_gates: tuple[Gate, ...]  # checked after the first, which put it on the short list

    def matches(self, text: Text) -> bool:
        return all(gate.admits(text) for gate in self.more_gates) and self.regex.search(text)


@dataclass(frozen=True)
class _Matcher:
    """The compiled rules: per category the patterns without a prefilter as one regex; the
    others indexed by their first gate, so a prompt costs a set intersection and a few
    probes, not a check per pattern."""

    always: tuple[_Regex | None, ...]  # by category
    patterns: tuple[_Pattern, ...]  # in priority order
    by_word: Mapping[str, frozenset[int]]  # first-gate word -> indexes into ``patterns``
    vocabulary: frozenset[str]
    by_needle: tuple[tuple[str, str, frozenset[int]], ...]  # probe, needle, indexes

    def first_match(self, text: Text) -> int | None:
        """The index of the first category that matches, if any."""
        shortlist = self._shortlist(text)
        position = 0
        for category, regex in enumerate(self.always):
            if regex is not None and regex.search(text):
                return category
            # Shortlisted patterns of this category, in order; the list is sorted.
            while position < len(shortlist):
                pattern = self.patterns[shortlist[position]]
                if pattern.category != category:
                    break
                position += 1
                if pattern.matches(text):
                    return category
        return None

    def _shortlist(self, text: Text) -> list[int]:
        chosen: set[int] = set()
        for word in self.vocabulary.intersection(text.words):
            chosen |= self.by_word[word]
        for probe, needle, indexes in self.by_needle:
            if probe in text.lowered and needle in text.lowered:
                chosen |= indexes
        return sorted(chosen)


def _build_matcher(rules: Sequence[CategoryRule], *, fast: bool) -> _Matcher:
    always: list[_Regex | None] = []
    patterns: list[_Pattern] = []
    by_word: dict[str, set[int]] = {}
    by_needle: dict[tuple[str, str], set[int]] = {}
    for category, rule in enumerate(rules):
        unfiltered: list[str] = []
        for pattern in rule.patterns:
            gates = gates_for(pattern) if fast else ()
            if not gates:
                unfiltered.append(pattern)
                continue
            for word in gates[0].words:
                by_word.setdefault(word, set()).add(len(patterns))
            for needle in gates[0].needles:
                by_needle.setdefault(needle, set()).add(len(patterns))
            patterns.append(_Pattern(category, _compile(pattern, fast), gates[1:]))
        alternation = "|".join(f"(?:{pattern})" for pattern in unfiltered)
        always.append(_compile(alternation, fast) if unfiltered else None)
    return _Matcher(
        always=tuple(always),
        patterns=tuple(patterns),
        by_word={word: frozenset(indexes) for word, indexes in by_word.items()},
        vocabulary=frozenset(by_word),
        by_needle=tuple((p, n, frozenset(i)) for (p, n), i in sorted(by_needle.items())),
    )


def _compile(pattern: str, fast: bool) -> _Regex:
    exact = re.compile(pattern, re.IGNORECASE)
    form = ascii_form(pattern) if fast else None
    return _Regex(exact, None if form is None else re.compile(form, re.ASCII))


def _collapse_whitespace(text: str) -> str:
    """``" ".join(text.split())``: also drops the ends, so "^"/"$" see the words."""
    if not text.isascii():
        return " ".join(text.split())
    # The same for ASCII text, several times faster on long text: no list of words.
    text = text.encode("ascii").translate(_ASCII_WHITESPACE).decode("ascii")
    while "  " in text:
        text = text.replace("  ", " ")
    return text.strip(" ")


# --- validation ----------------------------------------------------------------------


def _check_names(rules: Sequence[CategoryRule], fallback: str, source: str) -> tuple[str, ...]:
    names: list[str] = []
    for rule in rules:
        _check_name(rule.name, source, "category name")
        if rule.name in names:
            raise ValueError(f"{source}: duplicate category {rule.name!r}")
        names.append(rule.name)
    _check_name(fallback, source, "fallback")
    if fallback in names:
        raise ValueError(f"{source}: the fallback {fallback!r} is also listed as a category")
    if len(names) + 1 > MAX_CATEGORIES:
        raise ValueError(
            f"{source}: at most {MAX_CATEGORIES} categories are allowed, the fallback "
            f"included (each is a label value); got {len(names) + 1}"
        )
    return tuple(names)


def _check_name(name: str, source: str, what: str) -> None:
    # fullmatch, since "$" would also accept a trailing newline.
    if _NAME.fullmatch(name) is None:
        raise ValueError(
            f"{source}: {what} {name!r} is not a valid label value; "
            f"it must match {NAME_PATTERN} (lower case letter first, at most 32 characters)"
        )


def _check_patterns(rule: CategoryRule, source: str) -> None:
    if not rule.patterns:
        raise ValueError(f"{source}: category {rule.name!r} has no patterns")
    for pattern in rule.patterns:
        where = f"{source}: category {rule.name!r}, pattern {pattern!r}"
        if not pattern:
            raise ValueError(f"{where}: a pattern must not be empty (it would match everything)")
        try:
            # Alone first for the user's own positions in the message, then wrapped as it
            # will be used, which rejects e.g. "(?i)" in the middle of the alternation.
            compiled = re.compile(pattern, re.IGNORECASE)
            re.compile(f"(?:{pattern})", re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"{where}: invalid regular expression: {exc}") from exc
        if compiled.groupindex or _GROUP_REFERENCE.search(pattern):
            raise ValueError(f"{where}: named groups and group references are not supported")


# --- the rules file ------------------------------------------------------------------


def _parse_rules(data: object, source: str) -> tuple[list[CategoryRule], str]:
    """The rules and fallback from decoded JSON, checking its shape."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: the top level must be an object with a 'categories' list")
    _check_keys(data, _TOP_KEYS, source, "the top level")
    categories = data.get("categories")
    if not isinstance(categories, list):
        raise ValueError(f"{source}: 'categories' must be a list of objects")
    fallback = data.get("fallback", DEFAULT_FALLBACK)
    if not isinstance(fallback, str):
        raise ValueError(f"{source}: 'fallback' must be a string, got {fallback!r}")
    rules = [_parse_category(entry, index, source) for index, entry in enumerate(categories)]
    return rules, fallback


def _parse_category(entry: object, index: int, source: str) -> CategoryRule:
    what = f"category #{index + 1}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{source}: {what} must be an object with 'name' and 'patterns'")
    name = entry.get("name")
    if isinstance(name, str):
        what = f"category {name!r}"
    _check_keys(entry, _CATEGORY_KEYS, source, what)
    patterns = entry.get("patterns")
    if not isinstance(name, str) or not isinstance(patterns, list):
        raise ValueError(f"{source}: {what} needs a string 'name' and a list 'patterns'")
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"{source}: {what}: pattern {pattern!r} is not a string")
    return CategoryRule(name=name, patterns=tuple(patterns))


def _check_keys(
    entry: Mapping[str, object], allowed: frozenset[str], source: str, what: str
) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))} in {what}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
