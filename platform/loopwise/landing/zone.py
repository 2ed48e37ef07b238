"""Writing and reading landing files: one file per source per day, CSV or Parquet."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from loopwise.contracts import SourceContract
from loopwise.landing import malformed
from loopwise.usecase import UseCase

FORMATS = ("csv", "parquet")


class LandingFileMissing(FileNotFoundError):
    """No landing file for a source and day; the message says how to create it."""


@dataclass
class LandedFile:
    """One file written to the landing zone and the malformed lines it holds."""

    source: str
    path: Path
    rows: int
    bad_lines: dict[int, str] = field(default_factory=dict)


def landing_path(root: Path, source: str, day: date, fmt: str) -> Path:
    return root / source / f"{day.isoformat()}.{fmt}"


def find_landing_file(root: Path, source: str, day: date) -> Path:
    """The day's landing file of a source in either format, or a clear error."""
    for fmt in FORMATS:
        path = landing_path(root, source, day, fmt)
        if path.exists():
            return path
    raise LandingFileMissing(
        f"landing file missing: {landing_path(root, source, day, 'csv')} (or .parquet) "
        f"(create it with: loopwise land --date {day.isoformat()})"
    )


def _csv_line(fields: list[str | None]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(["" if f is None else f for f in fields])
    line = buf.getvalue().encode("utf-8")
    return line.replace(b"\x00LATIN1\x00", malformed.LATIN1_BODY.encode("cp1252"))


def write_landing_file(root: Path, contract: SourceContract, day: date, records: list[malformed.Record],
                       fmt: str) -> Path:
    """Write records atomically (temp file, then rename) so a reader never sees half a file."""
    path = landing_path(root, contract.name, day, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    for other in FORMATS:  # one file per source per day
        landing_path(root, contract.name, day, other).unlink(missing_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    if fmt == "csv":
        lines = [_csv_line(contract.column_names)] + [r.raw or _csv_line(r.fields) for r in records]
        tmp.write_bytes(b"\n".join(lines) + b"\n")
    else:
        columns = {name: [r.fields[i] if i < len(r.fields) else None for r in records]
                   for i, name in enumerate(contract.column_names)}
        pq.write_table(pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()}), tmp)
    tmp.replace(path)
    return path


def land_day(use_case: UseCase, root: Path, day: date, rows: int = 2000, seed: int = 7, drift: str | None = None,
             bad_row_fraction: float = 0.0, fmt: str = "csv") -> list[LandedFile]:
    """Generate one day of the use case's synthetic feed and land every source's file."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown landing format {fmt!r}; use one of {FORMATS}")
    if not 0.0 <= bad_row_fraction <= 0.5:
        raise ValueError(f"--bad-rows must be between 0 and 0.5, got {bad_row_fraction}")
    frames = use_case.feed.generate(day, rows, seed, drift)
    landed = []
    for name, frame in frames.items():
        contract = use_case.source(name).contract
        records, bad = malformed.inject(frame, contract, bad_row_fraction, seed + day.toordinal(), fmt)
        path = write_landing_file(root, contract, day, records, fmt)
        landed.append(LandedFile(name, path, len(records), bad))
    return landed


# The reader lives in reader.py; zone.read_landing_file and zone.LandedTable stay importable from here.
from loopwise.landing.reader import LandedTable as LandedTable  # noqa: E402
from loopwise.landing.reader import read_landing_file as read_landing_file  # noqa: E402


def complete_days(root: Path, sources: list[str]) -> dict[str, str]:
    """Days whose landing files are all there (one per source, either format), each with a signature of its
    files (name, size, modification time) that changes when any of them is landed again."""
    by_day: dict[str, list[str]] = {}
    for source in sources:
        folder = root / source
        for path in sorted(folder.glob("*.*")) if folder.is_dir() else []:
            if path.suffix.lstrip(".") not in FORMATS:
                continue  # a file still being written is a .tmp until its atomic rename
            stat = path.stat()
            by_day.setdefault(path.stem, []).append(f"{source}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return {day: "|".join(parts) for day, parts in sorted(by_day.items())
            if len({p.split("/", 1)[0] for p in parts}) == len(sources) and _is_date(day)}


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True
