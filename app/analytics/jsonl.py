"""Rows as gzip-compressed JSON lines, one file per UTC day.

    write(rows) ──▶ grouped by the UTC day of each row's timestamp
                     ──▶ <directory>/requests-YYYY-MM-DD.jsonl.gz   (one gzip member per batch)

Each batch is compressed in memory and appended to its day file as one new gzip member; gzip
readers (``gzip.open``, ``zcat``) read concatenated members as one stream. Lines are compact
JSON, UTF-8 (``ensure_ascii=False``), one row per line.

What :class:`JsonlBackend` guarantees:

- Durability: ``write`` returns only after every file it touched was flushed and fsynced (and
  the directory too, when it created a file). Any failure raises, so the batch is retried.
- Whole members only, as far as the process can see: an append that fails part-way (disk full,
  file size limit, I/O error) is cut back to the file's previous length before raising, so the
  file never ends in a half member written by a live process. A crash *during* an append can
  still leave one; :func:`read_rows` skips a damaged member with a warning and goes on with the
  members after it (plain gzip tools stop at it).
- No duplicates on retry: a batch spanning midnight goes to two files; when the second append
  fails after the first succeeded, the backend remembers the ids it already appended and the
  retry of the same batch skips them. (A crash loses the in-memory batch anyway.)
- Retention works on whole days: ``delete_older_than`` removes the files of UTC days that end
  before the cutoff's day starts and returns the number of FILES removed, not rows: counting
  rows would mean decompressing every file just to report a number.

One backend instance per directory: two writers appending to the same day file could interleave.
"""

from __future__ import annotations

import gzip
import json
import logging
import mmap
import os
import re
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime
from io import FileIO
from pathlib import Path
from typing import Any

from app.text import encodable

log = logging.getLogger(__name__)

FILE_NAME = re.compile(r"requests-(\d{4}-\d{2}-\d{2})\.jsonl\.gz")

_GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1, ID2, CM=deflate: where a member can start
_READ_CHUNK = 1 << 20


def compact_json(value: Any) -> str:
    """``value`` as compact JSON text that always encodes to UTF-8.

    Non-ASCII stays readable; only text holding a lone surrogate (a client's JSON can carry
    ``"\\ud800"``) is written with ASCII escapes, which UTF-8 can carry and ``json.loads``
    turns back into the same string. ``default=str`` keeps one odd value from making a batch
    fail forever.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    if not encodable(text):
        return json.dumps(value, separators=(",", ":"), default=str)
    return text


def day_of(timestamp: float) -> date:
    return datetime.fromtimestamp(timestamp, tz=UTC).date()


def file_name(day: date) -> str:
    return f"requests-{day.isoformat()}.jsonl.gz"


def day_files(directory: Path) -> list[tuple[date, Path]]:
    """The day files in ``directory``, oldest first; other files are not ours and ignored."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(FILE_NAME.fullmatch(name), name) for name in names]
    days = [(date.fromisoformat(match[1]), directory / name) for match, name in found if match]
    return sorted(days)


class JsonlBackend:
    """Appends batches of rows to daily gzip files in ``directory`` (created when missing)."""

    name = "jsonl"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Ids appended by a write() that then failed on a later day file: its retry skips them.
        self._appended: set[str] = set()

    def write(self, rows: list[dict[str, Any]]) -> None:
        pending = [row for row in rows if row["id"] not in self._appended]
        if not pending:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for day, day_rows in sorted(_by_day(pending).items()):
            lines = "".join(compact_json(row) + "\n" for row in day_rows).encode("utf-8")
            # mtime=0: the member depends on the rows only, not on when it was written.
            _append(self.directory / file_name(day), gzip.compress(lines, mtime=0))
            self._appended.update(row["id"] for row in day_rows)
        self._appended.clear()

    def delete_older_than(self, cutoff: float) -> int:
        """Remove the files of UTC days before the day of ``cutoff``; returns how many FILES.

        Never a partial day: the cutoff's own day is kept whole. A file that cannot be removed
        is logged and tried again by the next call.
        """
        first_kept = day_of(cutoff)
        removed = 0
        for day, path in day_files(self.directory):
            if day >= first_kept:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not remove %s: %s", path, exc)
                continue
            removed += 1
        if removed:
            log.info("removed %d day files before %s from %s", removed, first_kept, self.directory)
        return removed

    def close(self) -> None:
        """Nothing to release: every batch opens and closes its files."""


def _by_day(rows: list[dict[str, Any]]) -> dict[date, list[dict[str, Any]]]:
    days: dict[date, list[dict[str, Any]]] = {}
    for row in rows:
        days.setdefault(day_of(row["timestamp"]), []).append(row)
    return days


def _append(path: Path, member: bytes) -> None:
    """Append ``member`` and fsync; on failure cut the file back to where it was, then raise."""
    # Unbuffered, so a failed write leaves nothing in a Python buffer to flush later.
    with path.open("ab", buffering=0) as file:
        start = os.fstat(file.fileno()).st_size
        try:
            _write_all(file, member)
            os.fsync(file.fileno())
            if start == 0:
                _fsync_directory(path.parent)
        except OSError:
            _cut_back(file.fileno(), start, path)
            raise


def _write_all(file: FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]


def _cut_back(fd: int, size: int, path: Path) -> None:
    # A half member would hide every member appended after it from ordinary gzip readers.
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as exc:
        log.warning("%s: could not remove a failed append after byte %d: %s", path, size, exc)


def _fsync_directory(directory: Path) -> None:
    """Make a new file's name durable too (POSIX; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Every row of every complete member of ``path``, in order.

    Unlike ``gzip.open`` this does not stop at damage: a truncated or corrupt member (a crash
    during an append) is skipped with a warning, and reading resumes at the next member.
    """
    with path.open("rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for member in _members(data, path):
                yield from _parse(member, path)


def _members(data: mmap.mmap, path: Path) -> Iterator[bytes]:
    start = 0
    damaged_at: int | None = None
    while start < len(data):
        inflated = _inflate(data, start)
        if inflated is not None:
            if damaged_at is not None:
                _warn_damage(path, damaged_at, start, at_end=False)
                damaged_at = None
            yield inflated[0]
            start = inflated[1]
            continue
        damaged_at = start if damaged_at is None else damaged_at
        start = data.find(_GZIP_MAGIC, start + 1)
        if start < 0:
            _warn_damage(path, damaged_at, len(data), at_end=True)
            return


def _inflate(data: mmap.mmap, start: int) -> tuple[bytes, int] | None:
    """The decompressed member at ``start`` and where it ends; None when it is not whole.

    ``wbits=31`` reads one gzip member and checks its CRC and length, so ``eof`` means every
    byte of it is intact.
    """
    inflater = zlib.decompressobj(wbits=31)
    parts: list[bytes] = []
    position = start
    try:
        while not inflater.eof and position < len(data):
            chunk = data[position : position + _READ_CHUNK]
            parts.append(inflater.decompress(chunk))
            position += len(chunk)
    except zlib.error:
        return None
    if not inflater.eof:
        return None
    return b"".join(parts), position - len(inflater.unused_data)


def _warn_damage(path: Path, start: int, end: int, *, at_end: bool) -> None:
    where = "the end of the file" if at_end else f"the next member at byte {end}"
    log.warning(
        "%s: skipped bytes %d to %s, not a complete gzip member (an append cut short, "
        "e.g. by a crash)",
        path,
        start,
        where,
    )


def _parse(member: bytes, path: Path) -> Iterator[dict[str, Any]]:
    # Split on b"\n" only: JSON escapes every newline inside strings, while str.splitlines()
    # would also split on U+2028 and friends that ensure_ascii=False leaves in the text.
    for line in member.split(b"\n"):
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            log.warning("%s: skipped a line that is not JSON", path)
            continue
        if isinstance(row, dict):
            yield row
