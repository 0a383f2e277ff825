"""Prefilters for the prompt categoriser: which of its patterns are worth searching at all.

``re`` has no multi-pattern search, and a case-insensitive pattern that starts with ``\\b``
or an alternation is tried at every position of the text, 20-70 ns each: a hundred such
patterns take milliseconds over 2,500 characters. So each pattern gets gates derived from
its syntax tree, and only patterns whose gates all pass are searched.

A gate (:class:`Gate`) is a necessary condition for one pattern to match: the prompt
contains one of its ``words`` as a whole word, looked up in the set of the prompt's words
(nearly free), or else one of its ``needles`` as a substring (a scan of the text). Both
come from strings that every match must contain, so a prompt that a gate turns away could
never have matched. :func:`gates_for` gives at most three per pattern, cheapest first; the
categoriser indexes patterns by the first, so a prompt costs a set intersection and a few
substring probes rather than a search per pattern. :class:`Text` is a prompt in the forms
the gates read, made once per prompt.

The patterns that pass are searched, on ASCII text and when that is equivalent, as their
:func:`ascii_form`: case-sensitively in the lower-cased text, which lets ``re`` jump to a
fixed prefix.

Neither changes an answer (the tests compare against ``prefilter=False``); see
``python -m bench.categories`` for the numbers. Both read patterns with the parser ``re``
itself uses, ``re._parser``, which is private: if it is missing, or a pattern's tree is not
what is expected, that pattern gets no gate or no ASCII form and is searched as written:
slower, never wrong.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

# A bytes.translate table: anything but [0-9A-Za-z_] to space.
_ASCII_NON_WORD = bytes(code if chr(code).isalnum() or code == 95 else 32 for code in range(256))
# Characters that re's case-insensitive matching equates with i and s but str.lower()
# leaves apart (and the dotted capital I lowers to two characters).
_SRE_FOLDS = (("i\u0307", "i"), ("\u0131", "i"), ("\u017f", "s"))
_WORD_RUN = re.compile(r"\w+")


def _load_sre_parser() -> ModuleType | None:
    # The prefilter reads patterns with the parser ``re`` itself uses. It is private, so
    # if it ever moves, every pattern simply runs unfiltered: slower, never wrong.
    try:
        return importlib.import_module("re._parser")
    except ImportError:  # pragma: no cover - depends on the Python version
        return None


_SRE_PARSER = _load_sre_parser()


@dataclass(frozen=True)
class Text:
    """A prompt's examined text in the forms the matcher and its gates need, each made once."""

    window: str
    lowered: str  # lower-cased as re's case-insensitive matching compares
    words: frozenset[str]  # its words as re's \w sees them, lower-cased

    @classmethod
    def of(cls, window: str) -> Text:
        if window.isascii():
            lowered = window.lower()
            # bytes.translate uses a plain table; str.translate looks each character up.
            letters = lowered.encode("ascii").translate(_ASCII_NON_WORD).decode("ascii")
            return cls(window, lowered, frozenset(letters.split()))
        lowered = window.lower()
        for before, after in _SRE_FOLDS:
            lowered = lowered.replace(before, after)
        return cls(window, lowered, frozenset(_WORD_RUN.findall(lowered)))


@dataclass(frozen=True)
class Gate:
    """A necessary condition for a pattern to match: one of ``words`` or ``needles``."""

    words: frozenset[str]
    # (probe, needle): the needle's rarest character, which memchr finds (or, in most
    # prompts, does not) in a tenth of the time a substring search takes.
    needles: tuple[tuple[str, str], ...]

    def admits(self, text: Text) -> bool:
        if not self.words.isdisjoint(text.words):
            return True
        return any(
            probe in text.lowered and needle in text.lowered for probe, needle in self.needles
        )


# --- the prefilter -------------------------------------------------------------------
#
# For a pattern, find strings that every match must contain: runs of the syntax tree that
# can only match a few fixed strings ("summar" then "ize" or "y" gives "summarize" and
# "summary"). From each string take a whole word when both its ends are pinned by \b, ^,
# $ or a non-word character, since looking a word up in the prompt's word set is nearly
# free; else a piece of the string, which costs a substring search. Every such condition
# holds for every match, so the cheapest few are all required. Two markers stand for what
# is not one fixed character:

_NON_WORD = "\x00"  # any non-word characters (\s+, \W, [ -])
_EDGE = "\x01"  # a word boundary that takes no character (\b, ^, $, (?!\w))
_MAX_STRINGS = 256
_MAX_COST = 300
_MAX_GATES = 3
_CHARS_BY_FREQUENCY = " etaoinsrhldcumfpgwybvkxjqz.,'\"-?!:;()/0123456789"
_PROSE_PUNCTUATION = frozenset(".,'\"-?!:;()/")
_EDGES = frozenset(
    {"AT_BEGINNING", "AT_BEGINNING_LINE", "AT_BEGINNING_STRING", "AT_BOUNDARY"}
    | {"AT_END", "AT_END_LINE", "AT_END_STRING"}
)
_STARTS = frozenset({"AT_BEGINNING", "AT_BEGINNING_STRING"})
_NON_WORD_CLASSES = frozenset({"CATEGORY_SPACE", "CATEGORY_NOT_WORD"})
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
# Words so common that a prefilter on them passes for most long prompts.
_COMMON_WORDS = (
    "a all an and any are as at be by can do does each every for from get give how i if in "
    "into is it make me my no not of on or please so that the these this to we what with "
    "write you your"
)
_COMMON = frozenset(_COMMON_WORDS.split())


def gates_for(pattern: str) -> tuple[Gate, ...]:
    """Necessary conditions for ``pattern`` to match, cheapest first; () if none is useful."""
    if _SRE_PARSER is None or re.compile(pattern).flags & re.ASCII:
        # ASCII \b would split words where the prefilter's Unicode words do not.
        return ()
    try:
        tree = list(_SRE_PARSER.parse(pattern, re.IGNORECASE))
        if tree and str(tree[0][0]) == "AT" and str(tree[0][1]) in _STARTS:
            return ()  # tried at the start of the text only: cheaper than any prefilter
        gates = _sequence_gates(tree, before=False, after=False)
    except Exception:  # a private parser whose shape may change: fall back, never fail
        logger.debug("no prefilter for %r", pattern, exc_info=True)
        return ()
    # Each gate holds for every match, so requiring several is sound and more selective.
    useful = sorted((gate for gate in gates if _cost(gate) < _MAX_COST), key=_cost)
    return tuple(useful[:_MAX_GATES])


def _union(gates: Iterable[Gate]) -> Gate:
    gates = list(gates)
    words = frozenset().union(*(gate.words for gate in gates))
    return Gate(words, tuple(sorted({needle for gate in gates for needle in gate.needles})))


def _sequence_gates(nodes: list[Any], *, before: bool, after: bool) -> list[Gate]:
    """Prefilters for a sequence; ``before``/``after``: is it bounded by non-word text."""
    gates: list[Gate] = []
    run: frozenset[str] = frozenset({""})  # what the nodes of the current run can match
    left = before  # whether the current run starts at a word boundary
    for index, node in enumerate(nodes):
        strings = _strings(node)
        grown = None if strings is None else _product(run, strings)
        if grown is not None:
            run = grown
            continue
        if strings is None:
            gates += _run_gate(run, left=left, right=False)
            rest = _starts_bounded(nodes[index + 1 :], after)
            gates += _node_gates(node, before=_ends_bounded(run, left), after=rest)
            run, left = frozenset({""}), False
        else:  # too many strings to go on: start a new run at this node
            gates += _run_gate(run, left=left, right=_starts_bounded(nodes[index:], after))
            run, left = strings, _ends_bounded(run, left)
    return gates + _run_gate(run, left=left, right=after)


def _node_gates(node: Any, *, before: bool, after: bool) -> list[Gate]:
    """Prefilters from inside a node that is not a short list of fixed strings."""
    op, value = str(node[0]), node[1]
    if op in ("SUBPATTERN", "ATOMIC_GROUP"):
        body = value[-1] if op == "SUBPATTERN" else value
        return _sequence_gates(list(body), before=before, after=after)
    if op == "BRANCH":
        branches = [_sequence_gates(list(b), before=before, after=after) for b in value[1]]
        if not all(branches):
            return []  # some branch can match without any string we know of
        return [_union(min(gates, key=_cost) for gates in branches)]
    if op in _REPEATS and value[0] >= 1:
        return _sequence_gates(list(value[2]), before=False, after=False)
    return []


def _strings(node: Any) -> frozenset[str] | None:
    """The few fixed strings ``node`` can match, lower-cased, with markers; else None."""
    op, value = str(node[0]), node[1]
    if op == "LITERAL":
        lowered = chr(value).lower()
        return frozenset({lowered}) if len(lowered) == 1 else None
    if op == "IN":
        return _set_strings(value)
    if op == "AT":
        return frozenset({_EDGE}) if str(value) in _EDGES else None
    if op == "ASSERT_NOT" and _is_word_class(value[1]):
        return frozenset({_EDGE})  # (?![\w+#]) and (?<!\w) pin a word's end like \b
    if op in ("ASSERT", "ASSERT_NOT"):
        return frozenset({""})  # takes no characters; what it asserts is not relied on
    if op == "SUBPATTERN":
        return _sequence_strings(value[-1])
    if op == "BRANCH":
        branches = [_sequence_strings(branch) for branch in value[1]]
        if any(strings is None for strings in branches):
            return None
        return _capped(frozenset().union(*(s for s in branches if s is not None)))
    if op in _REPEATS:
        return _repeat_strings(*value)
    return None


def _sequence_strings(nodes: Iterable[Any]) -> frozenset[str] | None:
    strings: frozenset[str] | None = frozenset({""})
    for node in nodes:
        part = _strings(node)
        if part is None or strings is None:
            return None
        strings = _product(strings, part)
    return strings


def _set_strings(items: list[Any]) -> frozenset[str] | None:
    """A character class: a few literal characters, or "some non-word character"."""
    ops = [(str(op), value) for op, value in items]
    if [(op, str(value)) for op, value in ops] == [
        ("NEGATE", "None"),
        ("CATEGORY", "CATEGORY_WORD"),
    ]:
        return frozenset({_NON_WORD})
    chars: set[str] = set()
    for op, value in ops:
        if op == "LITERAL" and len(chr(value).lower()) == 1:
            chars.add(chr(value).lower())
        elif not (op == "CATEGORY" and str(value) in _NON_WORD_CLASSES):
            return None
    if len(chars) == len(ops) and len(chars) <= 8:
        return frozenset(chars)  # "[+*^]" names its characters: they can be needles
    if all(_is_boundary(char) for char in chars):
        return frozenset({_NON_WORD})  # "[\s,]", "\W": some non-word character
    return None


def _is_word_class(nodes: Any) -> bool:
    """Whether ``nodes`` is one character class that includes \\w."""
    nodes = list(nodes)
    if len(nodes) != 1 or str(nodes[0][0]) != "IN":
        return False
    items = [(str(op), str(value)) for op, value in nodes[0][1]]
    return ("CATEGORY", "CATEGORY_WORD") in items and ("NEGATE", "None") not in items


def _repeat_strings(low: int, high: int, body: Any) -> frozenset[str] | None:
    strings = _sequence_strings(body)
    if strings is None:
        return None
    if strings == {_NON_WORD}:
        # One marker stands for any number of non-word characters.
        return strings if low else frozenset({"", _NON_WORD})
    if high > 3:
        return None
    result: set[str] = set()
    current: frozenset[str] | None = frozenset({""})
    for count in range(high + 1):
        if current is None:
            return None
        if count >= low:
            result |= current
        current = _product(current, strings)
    return _capped(frozenset(result))


def _product(left: frozenset[str], right: frozenset[str]) -> frozenset[str] | None:
    if len(left) * len(right) > _MAX_STRINGS:
        return None
    return frozenset(a + b for a in left for b in right)


def _capped(strings: frozenset[str]) -> frozenset[str] | None:
    return strings if len(strings) <= _MAX_STRINGS else None


def _is_boundary(char: str) -> bool:
    return not (char.isalnum() or char == "_")  # the markers are not word characters


def _ends_bounded(run: frozenset[str], left: bool) -> bool:
    return all(_is_boundary(text[-1]) if text else left for text in run)


def _starts_bounded(nodes: list[Any], after: bool) -> bool:
    if not nodes:
        return after
    strings = _strings(nodes[0])
    if strings is None:
        return False
    return all(
        _is_boundary(text[0]) if text else _starts_bounded(nodes[1:], after) for text in strings
    )


def _run_gate(run: frozenset[str], *, left: bool, right: bool) -> list[Gate]:
    if run == {""}:
        return []
    prefix, suffix = _EDGE if left else "", _EDGE if right else ""
    return _strings_gate([prefix + text + suffix for text in run])


def _strings_gate(strings: list[str]) -> list[Gate]:
    """One prefilter that holds whichever of ``strings`` matched, if each offers one."""
    covers: dict[tuple[bool, str], set[int]] = {}
    for index, text in enumerate(strings):
        for option in _options(text):
            covers.setdefault(option, set()).add(index)
    uncovered = set(range(len(strings)))
    chosen: list[tuple[bool, str]] = []
    # Greedy weighted set cover: a word shared by many strings beats one word per string.
    while uncovered:
        useful = [option for option, indexes in covers.items() if indexes & uncovered]
        if not useful:
            return []  # a match could avoid every fixed string worth looking for
        best = min(useful, key=lambda o: _option_cost(o) / len(covers[o] & uncovered))
        chosen.append(best)
        uncovered -= covers[best]
    words = frozenset(text for is_word, text in chosen if is_word)
    needles = sorted(text for is_word, text in chosen if not is_word)
    return [Gate(words, tuple((max(needle, key=_rarity), needle) for needle in needles))]


def _options(text: str) -> list[tuple[bool, str]]:
    """(True, word) for each whole ASCII word of ``text``, (False, piece) for its pieces."""
    options: list[tuple[bool, str]] = []
    for match in _WORD_RUN.finditer(text):
        # \w+ runs are maximal, so one that touches neither end of the text is bordered
        # by non-word characters or markers on both sides: a whole word of the prompt.
        if match.start() > 0 and match.end() < len(text) and match.group().isascii():
            options.append((True, match.group()))
    for piece in text.replace(_EDGE, "").split(_NON_WORD):
        # Any piece is a substring of the match, and so are its parts: those between spaces
        # and its symbols are more often shared ("c++" of "c++ to " and "c++ into ").
        symbols = [char for char in piece if not char.isalnum() and char != " "]
        for needle in {piece, *piece.split(" "), *symbols}:
            # Needles must lower-case as the prompt does: ASCII, or characters without case.
            if needle.strip() and all(c.isascii() or c.lower() == c.upper() for c in needle):
                options.append((False, needle))
    return options


def _option_cost(option: tuple[bool, str]) -> int:
    # A word costs a set lookup, but a common one lets the pattern run anyway; a needle
    # costs a scan of the text, and a short one is found in most long prompts.
    is_word, text = option
    if text.strip() in _COMMON or (is_word and len(text) == 1):
        return 100  # "s" and "t" are words too, after an apostrophe
    if is_word:
        return 8 if len(text) == 2 else 4 if len(text) == 3 else 2 if len(text) < 6 else 1
    if not text.isascii():
        return 10  # symbols such as "√" are rare in prose
    if len(text) > 1:
        return 20 if len(text) > 2 else 40  # "hi" is in "this"
    return 100 if text.isalnum() else 60 if text in _PROSE_PUNCTUATION else 40


def _cost(gate: Gate) -> int:
    options = [(True, word) for word in gate.words] + [(False, n) for _, n in gate.needles]
    return sum(map(_option_cost, options))


def _rarity(char: str) -> int:
    """Higher for characters less likely in a prompt (English letter frequency order)."""
    index = _CHARS_BY_FREQUENCY.find(char)
    return len(_CHARS_BY_FREQUENCY) if index < 0 else index


# --- the ASCII form ------------------------------------------------------------------
#
# On ASCII text, a pattern matched case-insensitively finds the same as the pattern matched
# case-sensitively against the lower-cased text, if nothing in it is upper case (the text
# has none left) and it does not name the non-ASCII letters re equates with i, k and s.

_FOLDING_INTO_ASCII = frozenset({0x130, 0x131, 0x17F, 0x212A})
_SIMPLE = frozenset({"AT", "ANY", "CATEGORY"})
_LEADING_WORD = re.compile(r"\\b([a-z0-9_]+)")


def ascii_form(pattern: str) -> str | None:
    """``pattern`` as a case-sensitive pattern (to compile with ``re.ASCII``) that finds in
    the lower-cased form of an ASCII text what ``pattern`` finds case-insensitively in the
    text; None when there is no such form, or it cannot be told."""
    if _SRE_PARSER is None:
        return None
    try:
        safe = _case_safe(list(_SRE_PARSER.parse(pattern)))
    except Exception:  # the private parser again: no fast form rather than a wrong one
        logger.debug("no ASCII form for %r", pattern, exc_info=True)
        return None
    return _literal_first(pattern) if safe else None


def _literal_first(pattern: str) -> str:
    """``\\bword...`` as ``word(?<!\\wword)...``: on ASCII text the same matches, but re
    can jump from one "word" to the next instead of trying \\b at every position."""
    start = _LEADING_WORD.match(pattern)
    if start is None:
        return pattern
    word, rest = start.group(1), pattern[start.end() :]
    if rest[:1] in ("?", "*", "+", "{"):  # the quantifier takes the last letter
        word, rest = word[:-1], word[-1:] + rest
    return f"{word}(?<!\\w{word}){rest}" if word else pattern


def _case_safe(nodes: list[Any]) -> bool:
    return all(_node_case_safe(str(op), value) for op, value in nodes)


def _node_case_safe(op: str, value: Any) -> bool:
    if op in ("LITERAL", "NOT_LITERAL"):
        return _char_safe(value, value)
    if op == "IN":
        return all(_set_item_safe(str(item_op), item) for item_op, item in value)
    if op == "SUBPATTERN":  # (?-i:...) makes part of it case-sensitive
        return not value[2] & re.IGNORECASE and _case_safe(list(value[3]))
    if op == "BRANCH":
        return all(_case_safe(list(branch)) for branch in value[1])
    if op in _REPEATS:
        return _case_safe(list(value[2]))
    if op in ("ASSERT", "ASSERT_NOT"):
        return _case_safe(list(value[1]))
    if op == "ATOMIC_GROUP":
        return _case_safe(list(value))
    return op in _SIMPLE


def _set_item_safe(op: str, item: Any) -> bool:
    if op in ("LITERAL", "NOT_LITERAL"):
        return _char_safe(item, item)
    if op == "RANGE":
        return _char_safe(*item)
    return op in ("CATEGORY", "NEGATE")


def _char_safe(low: int, high: int) -> bool:
    """Whether no character from ``low`` to ``high`` is upper case ASCII or folds into ASCII."""
    if low <= ord("Z") and high >= ord("A"):
        return False
    return not any(low <= code <= high for code in _FOLDING_INTO_ASCII)
