"""``bench.openwebui`` in smoke mode: every chat and every poll became one record, and the
cost of the polls is worked out from the two runs (timings are not asserted)."""

from __future__ import annotations

import pytest

from bench.openwebui import SMOKE, run

pytestmark = pytest.mark.process


def test_smoke_run_counts_every_poll_as_a_record() -> None:
    result = run(SMOKE)
    quiet, busy = result["chats"], result["chats+polls"]
    assert quiet["polls"] == 0
    assert quiet["chats"] > 0
    assert quiet["records"] == {"/api/chat": quiet["chats"]}
    # Each tab asks /api/tags every second and /api/ps every five: both are recorded.
    polls = {e: n for e, n in busy["records"].items() if e != "/api/chat"}
    assert set(polls) == {"/api/tags", "/api/ps"}
    assert sum(polls.values()) == busy["polls"]
    assert polls["/api/tags"] >= SMOKE.tabs * int(SMOKE.seconds / SMOKE.tags_every)
    assert busy["records"]["/api/chat"] == busy["chats"]
    cost = result["polls_cost"]
    records = sum(busy["records"].values())
    assert cost["poll_share_of_records"] == pytest.approx(busy["polls"] / records)
    assert cost["poll_records_per_hour"] == pytest.approx(busy["polls"] / SMOKE.seconds * 3600)
    for run_ in (quiet, busy):
        assert run_["event_loop_cpu_s"] > 0
        assert run_["store_growth_bytes"] > 0
