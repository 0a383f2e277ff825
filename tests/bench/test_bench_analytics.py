"""``bench.analytics`` in smoke mode: every key is there and the numbers are sane (timings
are not asserted: benchmarks on a shared machine are noisy)."""

from __future__ import annotations

import pytest

from bench.analytics import KINDS, run, store_keys
from tests.conftest import POSTGRES_ADMIN, PostgresDatabases

pytestmark = pytest.mark.postgres


def test_smoke_run_reports_every_number(postgres: PostgresDatabases) -> None:
    result = run(smoke=True, postgres_url=POSTGRES_ADMIN)
    assert result["records"] == 2_000
    for prefix in ("sqlite", "postgresql"):
        for key in store_keys(prefix):
            assert isinstance(result[key], float | int), key
            assert result[key] > 0, key
        for kind in KINDS:
            p50 = result[f"{prefix}_search_{kind}_p50_ms"]
            assert p50 <= result[f"{prefix}_search_{kind}_p95_ms"]
        assert result[f"{prefix}_size_per_1m_bytes"] > result[f"{prefix}_size_bytes"]
    assert result["targets"]["sqlite_writer_records_per_s"]["target"] == "≥ 10000"
    assert all(t["pass"] in (True, False) for t in result["targets"].values())
    assert result["all_pass"] in (True, False)
