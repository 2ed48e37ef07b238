"""Malformed rows of every kind a real feed has, injected with a record of which lines they are."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopwise.contracts import SourceContract

# Every kind a contract's columns allow, in this order; CSV-only kinds are skipped for Parquet.
BAD_TIMESTAMPS = ("2026-13-45 25:61:00", "yesterday", "03/02/2026 10:00", "2026-03-02T99:00")
NON_NUMERIC = ("12,50 EUR", "N/A", "1.2.3", "twelve")
UNKNOWN_ENUM = "not_a_known_value"
# Text a legacy system wrote in Windows-1252: invalid as UTF-8.
LATIN1_BODY = "Grüße aus München – die Lieferung ist kaputt, bitte um Rückmeldung."


def kinds_for(contract: SourceContract, fmt: str) -> list[str]:
    """The malformed kinds a source can carry, from its contract's column kinds."""
    kinds = ["missing_id", "bad_timestamp"]
    if any(c.kind == "amount" for c in contract.columns):
        kinds += ["negative_amount", "non_numeric_amount"]
    if any(c.allowed for c in contract.columns):
        kinds.append("unknown_enum")
    kinds += ["duplicate_id", "truncated_line"]
    if fmt == "csv" and any(c.kind == "text" for c in contract.columns):
        kinds.append("wrong_encoding")
    return kinds


@dataclass
class Record:
    """One landed record: its field values, or raw bytes where the line itself is broken."""

    fields: list[str | None]
    raw: bytes | None = None


def inject(frame: pd.DataFrame, contract: SourceContract, fraction: float, seed: int, fmt: str
           ) -> tuple[list[Record], dict[int, str]]:
    """Turn a clean frame into records with `fraction` malformed; returns them and {line: kind}."""
    records = [Record([None if v is None else str(v) for v in row]) for row in frame.itertuples(index=False)]
    n = len(records)
    count = min(n - 1, int(round(fraction * n))) if fraction > 0 and n > 1 else 0
    if count <= 0:
        return records, {}
    rng = np.random.default_rng([seed, n, len(contract.name)])
    kinds = kinds_for(contract, fmt)
    chosen = np.sort(rng.choice(np.arange(1, n), size=count, replace=False))
    order = rng.permutation(len(kinds))
    bad: dict[int, str] = {}
    names = contract.column_names
    key, ts = names.index(contract.key), names.index(contract.event_time)
    amount = next((names.index(c.name) for c in contract.columns if c.kind == "amount"), -1)
    text = [names.index(c.name) for c in contract.columns if c.kind == "text"]
    chosen_set = set(chosen.tolist())
    for j, i in enumerate(chosen.tolist()):
        kind = kinds[order[j % len(kinds)]]
        fields = records[i].fields
        if kind == "missing_id":
            fields[key] = ""
        elif kind == "bad_timestamp":
            fields[ts] = str(rng.choice(BAD_TIMESTAMPS))
        elif kind == "negative_amount":
            fields[amount] = "-" + str(fields[amount])
        elif kind == "non_numeric_amount":
            fields[amount] = str(rng.choice(NON_NUMERIC))
        elif kind == "unknown_enum":
            enum_cols = [c.name for c in contract.columns if c.allowed]
            col = enum_cols[int(rng.integers(len(enum_cols)))]
            fields[names.index(col)] = UNKNOWN_ENUM
        elif kind == "duplicate_id":
            earlier = [k for k in range(i) if k not in chosen_set]
            fields[key] = records[int(rng.choice(earlier))].fields[key]
        elif kind == "truncated_line":
            cut = len(fields) // 2
            partial = (fields[cut] or "")[: max(1, len(fields[cut] or "") // 2)]
            if fmt == "csv":
                records[i] = Record(fields[:cut] + [partial])
            else:
                records[i] = Record(fields[:cut] + [partial] + [None] * (len(fields) - cut - 1))
        elif kind == "wrong_encoding":
            fields[text[-1]] = "\x00LATIN1\x00"  # replaced by the Windows-1252 bytes when written
        bad[i + 1] = kind  # lines are numbered from 1, after the header
    return records, bad
