"""How long ``Categoriser.categorise`` takes per prompt: ``python -m bench.categories``.

Prompts are generated from instruction templates (one or two per category, plus plain
requests that match nothing) padded with prose to lengths spread log-uniformly from 10
characters to 100 KB, with the instruction at the start, at the end or, for one in ten,
only in the middle (which the categoriser does not look at). The prose is everyday words
with, one word in five hundred, one that the rules key on ("review", "list", "english",
"python"), as real documents have, so that the prefilter is not flattered.

Each prompt is timed ``--rounds`` times and its fastest time kept, so that other processes
on the machine blur the numbers less; prints the mean, p50 and p99 of those per-prompt
times in microseconds, overall and per length band. ``--unfiltered`` times the reference
path instead (every pattern searched as written, ``prefilter=False``). Deterministic: a
fixed seed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections import Counter
from importlib import resources

from app.categories.categoriser import Categoriser, CategoryRule

INSTRUCTIONS = (
    "hi there!",
    "thanks so much for the help",
    "Fix this bug in my Python function:",
    "Traceback (most recent call last): File 'app.py', line 12, KeyError: 'user'",
    "Write a poem about the sea at night.",
    "Summarize the following article in 3 sentences.",
    "TL;DR please",
    "Translate the text below into German.",
    "Extract all email addresses and dates from this text.",
    "Classify the sentiment of this review as positive or negative.",
    "Solve for x: 3x + 4 = 19",
    "Compare the two proposals and list the pros and cons.",
    "Why do cats purr?",
    "Make this paragraph sound more formal.",
    "Please proofread the letter below and keep its tone.",
)
PROSE = (
    "the quarterly meeting moved to thursday because several members of the board were "
    "travelling and the venue had a scheduling conflict with a local festival so the agenda "
    "now covers budget staffing office lease renewal and a short update on the new website "
    "our team will look at the figures from last year and put them in a report for the "
    "customers who asked about prices delivery times and the printed version of the manual "
    "which the support desk sends by post after each order is placed online the project "
    "manager said that most people prefer a simple plan with clear goals and fewer meetings "
    "while others would like more time to weigh options before they decide anything new"
)
WORDS = tuple(PROSE.split())
KEYWORDS = (
    *("review", "list", "english", "data", "compare", "python", "code", "summary", "key"),
    *("table", "function", "question", "story", "translate", "solve", "sentiment", "extract"),
)
LENGTH_BANDS = ((10, 100), (100, 1_000), (1_000, 10_000), (10_000, 100_001))


def filler(rng: random.Random, length: int) -> str:
    """Roughly ``length`` characters of prose, in sentences and paragraphs."""
    parts: list[str] = []
    size = 0
    while size < length:
        words = [word(rng) for _ in range(rng.randint(6, 18))]
        sentence = " ".join(words)
        parts.append(sentence.capitalize() + (".\n\n" if rng.random() < 0.2 else ". "))
        size += len(parts[-1])
    return "".join(parts)[:length]


def word(rng: random.Random) -> str:
    return rng.choice(KEYWORDS) if rng.random() < 0.002 else rng.choice(WORDS)


def make_prompt(rng: random.Random) -> str:
    """One prompt of a log-uniform length between 10 characters and 100 KB."""
    length = int(math.exp(rng.uniform(math.log(10), math.log(100_000))))
    instruction = rng.choice(INSTRUCTIONS)
    padding = filler(rng, max(0, length - len(instruction) - 2))
    where = rng.random()
    if not padding:
        return instruction
    if where < 0.45:
        return f"{instruction}\n\n{padding}"
    if where < 0.9:
        return f"{padding}\n\n{instruction}"
    middle = len(padding) // 2
    return f"{padding[:middle]} {instruction} {padding[middle:]}"


def build(*, prefilter: bool) -> Categoriser:
    if prefilter:
        return Categoriser.default()
    # The same rules, every pattern searched as written.
    text = resources.files("app.categories").joinpath("rules.json").read_text("utf-8")
    rules = json.loads(text)
    categories = [CategoryRule(c["name"], tuple(c["patterns"])) for c in rules["categories"]]
    return Categoriser(categories, fallback=rules["fallback"], prefilter=False)


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def run(
    *, prompts: int = 5_000, rounds: int = 5, seed: int = 20240601, unfiltered: bool = False
) -> dict[str, object]:
    """µs per prompt (fastest of ``rounds`` per prompt): mean, p50, p99 overall and per band,
    and how many prompts went to each category."""
    rng = random.Random(seed)
    texts = [make_prompt(rng) for _ in range(prompts)]
    categoriser = build(prefilter=not unfiltered)
    categoriser.categorise("warm up the regex engine and the caches")

    best = [math.inf] * len(texts)
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for index, prompt in enumerate(texts):
            start = clock()
            categoriser.categorise(prompt)
            best[index] = min(best[index], (clock() - start) / 1_000)
    samples = list(zip((len(prompt) for prompt in texts), best, strict=True))
    bands = {"all lengths": best}
    for low, high in LENGTH_BANDS:
        band = [micros for length, micros in samples if low <= length < high]
        if band:
            bands[f"{low}-{high - 1} chars"] = band
    counts = Counter(categoriser.categorise(prompt) for prompt in texts)
    return {
        "mode": "prefilter=False" if unfiltered else "default rules",
        "prompts": prompts,
        "rounds": rounds,
        "us_per_prompt": {label: stats(values) for label, values in bands.items()},
        "categories": {name: counts[name] for name in categoriser.categories},
    }


def stats(micros: list[float]) -> dict[str, float]:
    ordered = sorted(micros)
    return {
        "n": len(ordered),
        "mean": statistics.fmean(ordered),
        "p50": percentile(ordered, 0.50),
        "p99": percentile(ordered, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=5_000, help="distinct prompts")
    parser.add_argument("--rounds", type=int, default=5, help="times each prompt is timed")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--unfiltered", action="store_true", help="time prefilter=False")
    args = parser.parse_args()

    found = run(
        prompts=args.prompts, rounds=args.rounds, seed=args.seed, unfiltered=args.unfiltered
    )
    print(
        f"categorise() ({found['mode']}): microseconds per prompt, fastest of {args.rounds} "
        f"rounds, {args.prompts} prompts of 10 chars to 100 KB"
    )
    bands: dict[str, dict[str, float]] = found["us_per_prompt"]  # type: ignore[assignment]
    for label, values in bands.items():
        print(
            f"{label:<22} n={int(values['n']):>6}  mean={values['mean']:9.2f}  "
            f"p50={values['p50']:9.2f}  p99={values['p99']:9.2f}"
        )
    counts: dict[str, int] = found["categories"]  # type: ignore[assignment]
    print("categories:", ", ".join(f"{name}={count}" for name, count in counts.items()))


if __name__ == "__main__":
    main()
