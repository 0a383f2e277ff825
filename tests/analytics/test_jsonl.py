"""The JSON-lines backend on a real temporary directory: gzip members, days, damage, retention."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.analytics.jsonl import JsonlBackend, compact_json, day_files, read_rows
from tests.support import sample_row

ROOT = Path(__file__).resolve().parents[2]
MIDNIGHT = datetime(2025, 3, 1, tzinfo=UTC).timestamp()  # 2025-03-01T00:00:00Z
HOSTILE = (
    'quote " backslash \\ newline \n cr \r tab \t nul \x00 bell \x07 '
    "line-sep \u2028 para-sep \u2029 bom \ufeff rtl \u202e emoji 🦙 cjk 漢字 é"
)


def make_row(n: int = 0, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": f"01JNX{n:021d}",
        "timestamp": MIDNIGHT + 3600 + n,
        "prompt": f"prompt {n}",
    }
    return sample_row(**{**fields, **overrides})


def day_file(directory: Path, day: str) -> Path:
    return directory / f"requests-{day}.jsonl.gz"


def gzip_rows(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as file:
        return [json.loads(line) for line in file]


def test_rows_read_back_with_plain_gzip_including_hostile_text(tmp_path: Path) -> None:
    rows = [make_row(0, prompt=HOSTILE, response=HOSTILE * 3), make_row(1, model="qwen3:8b")]
    backend = JsonlBackend(tmp_path / "made" / "on" / "demand")
    backend.write(rows)

    path = day_file(tmp_path / "made" / "on" / "demand", "2025-03-01")
    assert gzip_rows(path) == rows
    assert list(read_rows(path)) == rows
    raw = gzip.decompress(path.read_bytes())
    assert raw.count(b"\n") == 2  # one line per row: the newlines in the text are escaped
    assert "漢字 é".encode() in raw  # ensure_ascii=False: text stays readable UTF-8
    assert b',"method":"POST","path":' in raw  # compact separators


def test_a_lone_surrogate_round_trips_instead_of_failing_the_batch(tmp_path: Path) -> None:
    rows = [make_row(0, prompt="half a pair \ud83e and é")]
    JsonlBackend(tmp_path).write(rows)

    path = day_file(tmp_path, "2025-03-01")
    assert gzip.decompress(path.read_bytes()).decode("utf-8")  # still valid UTF-8
    assert list(read_rows(path)) == rows


def test_a_batch_spanning_midnight_utc_goes_to_two_files(tmp_path: Path) -> None:
    rows = [
        make_row(0, timestamp=MIDNIGHT - 0.001),
        make_row(1, timestamp=MIDNIGHT),
        make_row(2, timestamp=MIDNIGHT - 5),
    ]
    JsonlBackend(tmp_path).write(rows)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "requests-2025-02-28.jsonl.gz",
        "requests-2025-03-01.jsonl.gz",
    ]
    assert gzip_rows(day_file(tmp_path, "2025-02-28")) == [rows[0], rows[2]]
    assert gzip_rows(day_file(tmp_path, "2025-03-01")) == [rows[1]]


def test_each_batch_appends_one_member_and_readers_see_them_all(tmp_path: Path) -> None:
    backend = JsonlBackend(tmp_path)
    batches = [[make_row(b * 10 + i) for i in range(b % 4 + 1)] for b in range(50)]
    for batch in batches:
        backend.write(batch)
    backend.close()

    path = day_file(tmp_path, "2025-03-01")
    expected = [row for batch in batches for row in batch]
    assert gzip_rows(path) == expected
    assert list(read_rows(path)) == expected
    assert path.read_bytes().count(b"\x1f\x8b\x08\x00\x00\x00\x00\x00") == len(batches)


def test_an_empty_batch_touches_nothing(tmp_path: Path) -> None:
    JsonlBackend(tmp_path / "logs").write([])
    assert not (tmp_path / "logs").exists()


def test_a_truncated_last_member_still_yields_every_earlier_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = JsonlBackend(tmp_path)
    batches = [[make_row(b * 10 + i) for i in range(3)] for b in range(3)]
    for batch in batches:
        backend.write(batch)
    path = day_file(tmp_path, "2025-03-01")
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # a crash in the middle of the last append

    with pytest.raises(EOFError):
        gzip_rows(path)  # why read_rows exists
    with caplog.at_level(logging.WARNING, logger="app.analytics.jsonl"):
        assert list(read_rows(path)) == batches[0] + batches[1]
    assert "not a complete gzip member" in caplog.text
    assert "end of the file" in caplog.text


def test_a_damaged_member_in_the_middle_is_skipped_and_reading_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = JsonlBackend(tmp_path)
    path = day_file(tmp_path, "2025-03-01")
    backend.write([make_row(1)])
    good_end = path.stat().st_size
    backend.write([make_row(2, prompt="lost in the crash " * 50)])
    path.write_bytes(path.read_bytes()[: good_end + 40])  # the crash
    backend.write([make_row(3)])  # the restarted proxy appends to the same day

    with caplog.at_level(logging.WARNING, logger="app.analytics.jsonl"):
        assert [row["id"] for row in read_rows(path)] == [make_row(1)["id"], make_row(3)["id"]]
    assert f"skipped bytes {good_end} to the next member" in caplog.text


def test_an_empty_file_has_no_rows(tmp_path: Path) -> None:
    path = day_file(tmp_path, "2025-03-01")
    path.touch()
    assert list(read_rows(path)) == []


def test_retention_removes_whole_days_before_the_cutoff_day_only(tmp_path: Path) -> None:
    backend = JsonlBackend(tmp_path)
    day = 86400
    backend.write([make_row(n, timestamp=MIDNIGHT + (n - 3) * day + 60) for n in range(4)])
    (tmp_path / "requests-2020-01-01.jsonl").write_text("not ours")
    (tmp_path / "notes.txt").write_text("not ours")

    # Cutoff in the middle of 2025-02-28: that day holds rows on both sides, so it stays.
    assert backend.delete_older_than(MIDNIGHT - day / 2) == 2
    assert [d.isoformat() for d, _ in day_files(tmp_path)] == ["2025-02-28", "2025-03-01"]
    assert (tmp_path / "requests-2020-01-01.jsonl").exists()
    assert (tmp_path / "notes.txt").exists()

    assert backend.delete_older_than(MIDNIGHT) == 1  # 2025-02-28 ends exactly at the cutoff
    assert backend.delete_older_than(MIDNIGHT) == 0
    assert [d.isoformat() for d, _ in day_files(tmp_path)] == ["2025-03-01"]


def test_retention_on_a_directory_not_created_yet_removes_nothing(tmp_path: Path) -> None:
    assert JsonlBackend(tmp_path / "missing").delete_older_than(MIDNIGHT) == 0


def test_a_directory_that_cannot_be_created_raises_so_the_batch_is_retried(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("")
    backend = JsonlBackend(tmp_path / "a-file" / "logs")
    with pytest.raises(NotADirectoryError):
        backend.write([make_row()])


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that bind"
)
def test_a_directory_without_write_permission_raises_so_the_batch_is_retried(
    tmp_path: Path,
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(PermissionError):
            JsonlBackend(locked).write([make_row()])
    finally:
        locked.chmod(0o700)


def test_a_retry_after_a_half_done_batch_writes_no_row_twice(tmp_path: Path) -> None:
    rows = [make_row(0, timestamp=MIDNIGHT - 1), make_row(1, timestamp=MIDNIGHT + 1)]
    blocker = day_file(tmp_path, "2025-03-01")
    blocker.mkdir()  # the second day's file cannot be opened
    backend = JsonlBackend(tmp_path)
    with pytest.raises(IsADirectoryError):
        backend.write(rows)
    assert gzip_rows(day_file(tmp_path, "2025-02-28")) == [rows[0]]

    blocker.rmdir()
    backend.write(rows)  # the writer retries the same batch
    backend.write([make_row(2, timestamp=MIDNIGHT - 2)])  # later batches are not filtered
    assert gzip_rows(day_file(tmp_path, "2025-02-28")) == [
        rows[0],
        make_row(2, timestamp=MIDNIGHT - 2),
    ]
    assert gzip_rows(day_file(tmp_path, "2025-03-01")) == [rows[1]]


# The append fails part-way for real: a file size limit in a child process.
_FILE_SIZE_LIMIT = """
import os, resource, signal, sys
from pathlib import Path
from tests.support import sample_row
from app.analytics.jsonl import JsonlBackend
from tests.analytics.test_jsonl import make_row

path = Path(sys.argv[1]) / "requests-2025-03-01.jsonl.gz"
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 3000, resource.RLIM_INFINITY))
rows = [make_row(n, prompt=os.urandom(4000).hex()) for n in range(5)]  # incompressible
try:
    JsonlBackend(path.parent).write(rows)
except OSError as exc:
    print(exc.errno)
"""


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
def test_an_append_failing_part_way_is_cut_back_so_the_file_stays_whole(tmp_path: Path) -> None:
    first = [make_row(0)]
    JsonlBackend(tmp_path).write(first)
    path = day_file(tmp_path, "2025-03-01")
    size = path.stat().st_size

    child = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert child.stdout.strip() == "27"  # EFBIG: the write really failed part-way

    assert path.stat().st_size == size
    assert gzip_rows(path) == first


def test_compact_json_is_the_line_format() -> None:
    assert compact_json({"a": [1, None, True], "é": "\u2028"}) == '{"a":[1,null,true],"é":"\u2028"}'
    assert compact_json({"s": "\udcff"}) == '{"s":"\\udcff"}'
    assert json.loads(compact_json({"s": "\udcff"})) == {"s": "\udcff"}
