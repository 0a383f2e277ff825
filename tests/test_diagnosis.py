"""``app.diagnosis``: the plain-words line of a record, finding by finding."""

from __future__ import annotations

import pytest

from app.diagnosis import QUEUE_NOTE_S, STALL_NOTE_S, explain
from tests.support import sample_record


def test_a_quick_request_has_nothing_to_explain() -> None:
    record = sample_record(queue_wait_s=0.01, max_gap_s=0.2, placement="gpu", gpu_share=1.0)
    assert explain(record) is None
    assert record.diagnosis is None


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        (
            {"cold_cause": "options", "cold_detail": "num_ctx 8192 ≠ loaded 4096"},
            "cold start: 6.4 s loading qwen3:8b, reloaded because num_ctx 8192 ≠ loaded 4096",
        ),
        (
            {"cold_cause": "evicted", "cold_detail": "by llama3.2:latest"},
            "cold start: 6.4 s loading qwen3:8b, loaded again after it was evicted by "
            "llama3.2:latest",
        ),
        (
            {"cold_cause": "expired"},
            "cold start: 6.4 s loading qwen3:8b, loaded again after its keep-alive expired",
        ),
        ({"cold_cause": "first_load"}, "cold start: 6.4 s loading qwen3:8b, not in memory before"),
        ({"cold_cause": "unknown"}, "cold start: 6.4 s loading qwen3:8b"),
        (
            {"cold_cause": "first_load", "ollama_load_s": None},
            "cold start of qwen3:8b, not in memory before",
        ),
    ],
)
def test_a_cold_start_says_how_long_and_why(fields: dict[str, object], said: str) -> None:
    record = sample_record(**{"model": "qwen3:8b", "ollama_load_s": 6.4, **fields})
    assert explain(record) == said


def test_a_queue_wait_names_the_requests_ahead() -> None:
    one = sample_record(queue_wait_s=2.1, requests_ahead=1)
    three = sample_record(queue_wait_s=12.3, requests_ahead=3)
    alone = sample_record(queue_wait_s=0.35, requests_ahead=0)
    assert explain(one) == "waited 2.1 s for a free slot (1 request was in flight for this " + (
        "model when it arrived)"
    )
    assert explain(three) == (
        "waited 12 s for a free slot (3 requests were in flight for this model when it arrived)"
    )
    assert explain(alone) == "waited 0.35 s for a free slot"
    assert explain(sample_record(queue_wait_s=QUEUE_NOTE_S * 0.9, requests_ahead=4)) is None


@pytest.mark.parametrize(
    ("placement", "share", "said"),
    [
        ("mixed", 0.62, "model 38 % on CPU"),
        ("mixed", 0.999, "model 1 % on CPU"),  # never rounded to a misleading 0 %
        ("mixed", 0.001, "model 99 % on CPU"),
        ("cpu", 0.0, "model 100 % on CPU"),
        ("gpu", 1.0, None),
        (None, None, None),
    ],
)
def test_placement_on_the_cpu_is_said_in_percent(
    placement: str | None, share: float | None, said: str | None
) -> None:
    assert explain(sample_record(placement=placement, gpu_share=share)) == said


def test_cuts_and_stalls_and_several_findings_in_one_line() -> None:
    prompt = sample_record(truncation="prompt", context_tokens=4096)
    assert explain(prompt) == "prompt filled the 4096-token context: the start was cut"
    output = sample_record(truncation="output", done_reason="length")
    assert explain(output) == "output stopped at its token limit (done_reason length)"
    assert explain(sample_record(max_gap_s=STALL_NOTE_S + 1)) == "the stream stalled for 3.0 s"
    everything = sample_record(
        model="m",
        cold_cause="expired",
        ollama_load_s=3.0,
        queue_wait_s=1.5,
        requests_ahead=2,
        placement="mixed",
        gpu_share=0.5,
        truncation="prompt",
        context_tokens=None,
    )
    assert explain(everything) == (
        "cold start: 3.0 s loading m, loaded again after its keep-alive expired; "
        "waited 1.5 s for a free slot (2 requests were in flight for this model when it "
        "arrived); model 50 % on CPU; prompt filled the context: the start was cut"
    )
    assert everything.diagnosis == explain(everything)
