"""``bench.ablation``: its removals still find what they remove, and one short round of every
variant serves every request (timings are not asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import ablation
from bench.procs import ROOT


def test_a_removal_whose_target_is_gone_fails_loudly() -> None:
    class Owner:
        present = 1

    ablation._replace(Owner, "present", 2)
    assert Owner.present == 2
    with pytest.raises(AttributeError, match=r"bench\.ablation needs updating"):
        ablation._replace(Owner, "renamed", 2)


def test_every_removal_finds_its_target() -> None:
    # In a process of its own: the removals change the product's classes for good.
    code = "from bench import ablation\nfor remove in ablation._REMOVALS.values(): remove()"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_table_shows_each_layers_cost() -> None:
    figures = {"rps": 1.0, "errors": 0, "requests": 1, "event_loop_us": 0.0, "other_us": 0.0}
    result = {
        "path": "/api/tags",
        "connections": 64,
        "variants": {
            "full": {**figures, "total_us": 180.0},
            "no_tap": {**figures, "total_us": 55.0},
        },
    }
    rows = ablation.table(result).splitlines()
    assert rows[-2].endswith("| 180 | 125 |")
    assert rows[-1].endswith("| 55 | 55 |")


@pytest.mark.process
def test_one_round_of_every_variant_serves_every_request() -> None:
    result = ablation.run(seconds=1, rounds=1)
    assert list(result["variants"]) == list(ablation.VARIANTS)
    for variant, figures in result["variants"].items():
        assert figures["requests"] > 0, variant
        assert figures["errors"] == 0, variant
        assert figures["total_us"] > 0, variant
