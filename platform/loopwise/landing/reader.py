"""Reading a landing file as landed: RFC 4180 CSV or Parquet into strings, one row per record.

A CSV file is read in windows of whole lines. numpy finds the records over the raw bytes (a
quoted value may hold newlines, quotes and commas), pyarrow parses the well-formed ones, and the
few malformed ones are read a line each as Python's csv module reads a line, so validation
quarantines each whole and the clean rows around it are kept. No Python object is made per
clean row, and memory stays near the size of the table returned.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from loopwise.contracts import SourceContract

# Bytes read per window. A window's working memory is some 15x its size: 4 MiB windows read a
# 10 M-row, 680 MB file about as fast as 8 or 16 MiB ones, at a lower peak (2.84x the file's size,
# against 2.87x and 3.0x).
WINDOW_BYTES = 4 << 20
# A quoted value may run over lines for at most this many bytes; past that, the line that opened
# it is read alone as a malformed record, so one stray quote cannot pull the rest of a file in.
MAX_SPAN_BYTES = 256 << 20

# While a file is read, Arrow allocates from the system allocator, trimmed every TRIM_BYTES read so
# that freed window memory goes back to the system. Reading that file in a fresh process peaked at
# 3.07x with Arrow's default pool (mimalloc) left as the default, though it served only some 6 MB,
# and at 3.04x untrimmed; trimming every 16 MiB instead of 64 cost 1 s more CPU for 0.02x less.
POOL = pa.system_memory_pool()
TRIM_BYTES = 64 << 20

BOM = b"\xef\xbb\xbf"
NEWLINE, CR, QUOTE, COMMA = 10, 13, 34, 44
BLANK_BYTES = b" \t\r\x0b\x0c"  # what bytes.strip() removes besides the newline: a blank line is no record
_STARTS_BLANK = np.isin(np.arange(256), np.frombuffer(BLANK_BYTES, np.uint8))  # by a line's first byte

COLUMNS_AFTER_CONTRACT = {"_line": pa.int64(), "_landed_row": pa.string(), "_field_shortfall": pa.int32(),
                          "_extra_columns": pa.string()}


@dataclass
class LandedTable:
    """A landing file read as strings, with each record's line and the schema it arrived with."""

    table: pa.Table
    missing_columns: list[str]
    extra_columns: list[str]


def read_landing_file(path: Path, contract: SourceContract) -> LandedTable:
    """Read a landing file as landed: every value a string (an empty CSV field is null), nothing dropped.

    Next to the contract's columns: `_line`, the physical line after the header where the record
    starts; `_landed_row`, its text without the line terminator; `_field_shortfall`, header fields
    minus the record's (a truncated line has a shortfall); `_extra_columns`, JSON of the columns
    outside the contract; `_key_occurrence`, the how-many-th time the record's key appears in the
    file. Bytes that are not UTF-8 are decoded with replacement characters, which validation flags.
    """
    read = _read_parquet if path.suffix == ".parquet" else _read_csv
    with _system_memory():
        header, tables = read(path, contract)
        schema = pa.schema([*(pa.field(c, pa.string()) for c in contract.column_names), *COLUMNS_AFTER_CONTRACT.items()])
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        # The how-many-th time this id appears in the file, in line order: later duplicates fail.
        table = table.append_column("_key_occurrence", _key_occurrence(table.column(contract.key)))
    extra = [h for h in header if h not in contract.column_names]
    return LandedTable(table, [c for c in contract.column_names if c not in header], extra)


# --- CSV -------------------------------------------------------------------------------------------


class _Columns:
    """Where each column the table needs sits in the file's header."""

    def __init__(self, header: list[str], contract: SourceContract) -> None:
        index = {name: i for i, name in enumerate(header)}  # a repeated name: its last position
        self.width = len(header)
        self.contract = [(name, index.get(name)) for name in contract.column_names]
        self.extra = [(name, index[name]) for name in dict.fromkeys(h for h in header if h not in contract.column_names)]
        self.positions = sorted({i for _, i in self.contract + self.extra if i is not None})


@contextlib.contextmanager
def _system_memory() -> Iterator[None]:
    """Make POOL Arrow's default pool while a file is read (see POOL for why).

    Process-wide, but every buffer is freed to the pool that allocated it, so another thread
    allocating meanwhile, or switching back, is safe at any time.
    """
    previous = pa.default_memory_pool()
    pa.set_memory_pool(POOL)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _read_csv(path: Path, contract: SourceContract) -> tuple[list[str], list[pa.Table]]:
    tables = []
    with path.open("rb") as f:
        buf, at_eof = bytearray(), False
        while b"\n" not in buf and not at_eof:
            chunk = f.read(WINDOW_BYTES)
            at_eof = not chunk
            buf += chunk
        if buf.startswith(BOM):  # as spreadsheet programs write UTF-8
            del buf[:len(BOM)]
        cut = buf.find(b"\n") + 1 or len(buf)
        header = _split_line(bytes(buf[:cut]).decode("utf-8", errors="replace").removesuffix("\n").removesuffix("\r"))
        del buf[:cut]
        columns = _Columns(header, contract)
        first_line, size, untrimmed = 1, WINDOW_BYTES, 0
        while buf or not at_eof:
            if len(buf) < size and not at_eof:
                chunk = f.read(size - len(buf))
                at_eof = not chunk
                buf += chunk
                continue
            end = len(buf) if at_eof else buf.rfind(b"\n", 0, size) + 1
            if end == 0:  # one line longer than the window: read on to its end
                size *= 2
                continue
            # A copy: pyarrow may let go of the bytes it read a moment after it returns.
            with memoryview(buf) as view:
                raw = bytes(view[:end])
            window = _read_window(raw, first_line, columns, at_eof or size >= MAX_SPAN_BYTES)
            if window.lines == 0:  # a quoted value opened at the window's start runs past its end
                size *= 2
                continue
            if window.table is not None:
                tables.append(window.table)
            del buf[:window.used]
            first_line += window.lines
            size = WINDOW_BYTES
            untrimmed += window.used
            if untrimmed >= TRIM_BYTES:
                POOL.release_unused()  # give the window's scratch memory back to the system
                untrimmed = 0
    POOL.release_unused()
    return header, tables


@dataclass
class _Window:
    """What one window of lines gave: its records, and what it used."""

    table: pa.Table | None
    used: int  # bytes of the buffer
    lines: int


def _read_window(raw: bytes, first_line: int, columns: _Columns, final: bool) -> _Window:
    """The records of a window of whole lines.

    A quoted value still open at the end is left for the next window, with more data, unless `final`.
    """
    data = _valid_utf8(raw)
    a = np.frombuffer(data, np.uint8)
    lines = _Lines(a, data)
    records = _Records(a, data, lines, columns.width, final)
    if records.used_lines == lines.count:
        used = len(raw)
    elif data is raw:
        used = int(lines.starts[records.used_lines])
    else:  # the repair changed lengths: count the lines in the original
        used = int(np.flatnonzero(np.frombuffer(raw, np.uint8) == NEWLINE)[records.used_lines - 1]) + 1
    if records.count == 0:
        return _Window(None, used, records.used_lines)
    fields = _parse_fields(data, records, columns)
    values = {name: fields[i] if i is not None else _null_strings(records.count) for name, i in columns.contract}
    table = pa.table({
        **values,
        "_line": _numbers(first_line + records.first, np.int64),
        "_landed_row": _landed_rows(data, records, lines),
        "_field_shortfall": _numbers(columns.width - records.fields, np.int32),
        "_extra_columns": _extra_json(fields, records, columns),
    })
    return _Window(table, used, records.used_lines)


def _valid_utf8(data: bytes) -> bytes:
    """The bytes as they are when they are UTF-8, else with U+FFFD for each invalid sequence."""
    offsets = pa.py_buffer(np.array([0, len(data)], np.int64))
    try:  # a zero-copy check in Arrow, several times faster than bytes.decode
        pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)]).cast(pa.large_string())
        return data
    except pa.ArrowInvalid:
        # Replacement never takes an ASCII byte with it, so quotes, commas and newlines stay put.
        return data.decode("utf-8", errors="replace").encode("utf-8")


class _Lines:
    """The physical lines of a window: start, end (its newline) and content end (before a CR LF)."""

    def __init__(self, a: np.ndarray, data: bytes) -> None:
        ends = np.flatnonzero(a == NEWLINE)
        if len(a) and (len(ends) == 0 or ends[-1] != len(a) - 1):
            ends = np.append(ends, len(a))  # the file's last line, without a newline
        self.count = len(ends)
        self.ends = ends
        self.starts = np.empty(len(ends) + 1, np.int64)  # and one past the last line
        self.starts[0] = 0
        self.starts[1:] = ends + 1
        self.content_ends = ends
        self.has_cr = b"\r" in data
        if self.has_cr and len(ends):
            before = a[np.maximum(ends - 1, 0)]
            self.content_ends = ends - ((before == CR) & (ends > self.starts[:-1]))


class _Records:
    """Where the records of a window are, which are well-formed, and how many fields each has.

    Quotes are read as RFC 4180 has them: a quote opens a value only at the start of a field, and
    closes it only before a comma, the end of the line or a second quote (an escaped one). A line
    with an odd number of quotes opens a value that the next such line closes; the record spans
    both only where its quoting is valid and it then has the header's field count. Otherwise the
    opening line is one malformed record on its own and reading goes on from the next line.
    """

    def __init__(self, a: np.ndarray, data: bytes, lines: _Lines, width: int, final: bool) -> None:
        n = lines.count
        starts, ends, content_ends = lines.starts[:-1], lines.ends, lines.content_ends
        quotes = np.flatnonzero(a == QUOTE) if b'"' in data else np.empty(0, np.int64)
        commas = np.flatnonzero(a == COMMA)
        quote_line = np.searchsorted(ends, quotes)
        first_quote = np.zeros(n + 1, np.int64)  # per line, and one past the last
        np.cumsum(np.bincount(quote_line, minlength=n), out=first_quote[1:])
        odd = ((first_quote[1:] - first_quote[:-1]) & 1).astype(bool)
        bad_outside, bad_inside = self._quoting(a, lines, quotes, quote_line, first_quote)

        # Pair each line of odd quotes with the next one; keep the pairs that make one record.
        odd_lines = np.flatnonzero(odd)
        opener, closer = odd_lines[:-1], odd_lines[1:]
        inside_bad = np.concatenate([[0], np.cumsum(bad_inside)])
        pair_ok = ~bad_outside[opener] & ~bad_inside[closer] & (inside_bad[closer] == inside_bad[opener + 1])
        check = np.flatnonzero(pair_ok)
        pair_ok[check] = _fields_outside_quotes(commas, quotes, starts[opener[check]], content_ends[closer[check]],
                                                first_quote[opener[check]]) == width
        spans, stop = self._pair(odd_lines.tolist(), pair_ok.tolist(), final)
        self.used_lines = used = n if stop is None else stop

        # Records: every used line that is neither inside a span nor blank.
        span_open = np.array([s for s, _ in spans], np.int64)
        span_close = np.array([e for _, e in spans], np.int64)
        inside_span = np.zeros(used + 1, np.int64)
        inside_span[span_open + 1] += 1
        inside_span[span_close + 1] -= 1
        last_line = np.arange(used)
        last_line[span_open] = span_close
        first = np.flatnonzero(np.cumsum(inside_span[:used]) == 0)
        blank = content_ends[first] == starts[first]
        maybe_blank = np.flatnonzero(~blank & _STARTS_BLANK[a[np.minimum(starts[first], len(a) - 1)]])
        for i in maybe_blank.tolist():
            blank[i] = not data[starts[first[i]]:content_ends[first[i]]].strip(BLANK_BYTES)
        first = first[~blank]
        last = last_line[first]
        self.count, self.first, self.last = len(first), first, last
        self.starts, self.ends, self.line_ends = starts[first], content_ends[last], ends[last]
        self.spans = len(spans) > 0
        well_formed = ~bad_outside[first] & (~odd[first] | (last != first))

        # Commas inside the quoted values of well-formed records are text, not separators.
        quoted = np.flatnonzero(well_formed & (first_quote[last + 1] > first_quote[first]))
        if len(quoted):
            lo = np.searchsorted(commas, self.starts[quoted])
            hi = np.searchsorted(commas, self.ends[quoted])
            inside = _ranges(lo, hi)
            owner = np.repeat(quoted, hi - lo)
            parity = (np.searchsorted(quotes, commas[inside]) - first_quote[first[owner]]) & 1
            keep = np.ones(len(commas), bool)
            keep[inside[parity == 1]] = False
            commas = commas[keep]
        self.fields = _count_between(commas, self.starts, self.ends) + 1
        self.regular = well_formed & (self.fields == width)
        self.parsed: dict[int, list[str]] = {}  # the malformed records' fields, by record

    @staticmethod
    def _quoting(a: np.ndarray, lines: _Lines, quotes: np.ndarray, quote_line: np.ndarray, first_quote: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Per line: is its quoting broken if it starts outside a quoted value, and if inside one."""
        starts, content_ends = lines.starts[:-1], lines.content_ends
        bad_outside, bad_inside = np.zeros(lines.count, bool), np.zeros(lines.count, bool)
        if len(quotes):
            opens = ((np.arange(len(quotes)) - first_quote[quote_line]) & 1) == 0  # where the line starts outside
            before = np.where(quotes > 0, a[np.maximum(quotes - 1, 0)], NEWLINE)
            after = np.where(quotes + 1 < len(a), a[np.minimum(quotes + 1, len(a) - 1)], NEWLINE)
            opens_ok = (before == COMMA) | (before == QUOTE) | (quotes == starts[quote_line])
            closes_ok = (after == COMMA) | (after == QUOTE) | (quotes + 1 >= content_ends[quote_line])
            bad_outside[quote_line[np.where(opens, ~opens_ok, ~closes_ok)]] = True
            bad_inside[quote_line[np.where(opens, ~closes_ok, ~opens_ok)]] = True
        # A CR that ends no line is text inside quotes and malformed outside them: pyarrow, like
        # most readers, would end a record there.
        if lines.has_cr and np.count_nonzero(content_ends != lines.ends) != np.count_nonzero(a == CR):
            crs = np.flatnonzero(a == CR)
            line = np.searchsorted(lines.ends, crs)
            stray = crs != content_ends[line]
            crs, line = crs[stray], line[stray]
            outside = ((np.searchsorted(quotes, crs) - first_quote[line]) & 1) == 0
            bad_outside[line[outside]] = True
            bad_inside[line[~outside]] = True
        return bad_outside, bad_inside

    @staticmethod
    def _pair(odd_lines: list[int], pair_ok: list[bool], final: bool) -> tuple[list[tuple[int, int]], int | None]:
        """Spans (opening line, closing line), and the line to stop before where a value is still open."""
        if len(odd_lines) % 2 == 0 and all(pair_ok[0::2]):
            return list(zip(odd_lines[0::2], odd_lines[1::2], strict=True)), None
        spans, i = [], 0
        while i < len(odd_lines):
            if i + 1 < len(odd_lines) and pair_ok[i]:
                spans.append((odd_lines[i], odd_lines[i + 1]))
                i += 2
            elif i + 1 < len(odd_lines) or final:
                i += 1  # read alone, as one malformed record
            else:
                return spans, odd_lines[i]
        return spans, None


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The concatenation of arange(lo[i], hi[i]) for every i, without a Python loop."""
    lengths = hi - lo
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, np.int64)
    shift = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return shift + np.arange(total)


def _count_between(positions: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many of the sorted `positions` fall in each [start, end) of sorted, disjoint ranges, where
    none falls between two ranges (commas are not in line terminators or blank lines)."""
    per = len(positions) // max(len(starts), 1)
    if per and per * len(starts) == len(positions):
        # The common case, every record with as many: check that in one pass, with no search.
        grid = positions.reshape(len(starts), per)
        if np.all(grid[:, 0] >= starts) and np.all(grid[:, -1] < ends):
            return np.full(len(starts), per, np.int64)
    before_end = np.searchsorted(positions, ends)
    return np.diff(before_end, prepend=np.searchsorted(positions, starts[:1]))


def _fields_outside_quotes(commas: np.ndarray, quotes: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                           first_quote: np.ndarray) -> np.ndarray:
    """The fields of each [start, end), read as one record that starts outside quotes."""
    lo, hi = np.searchsorted(commas, starts), np.searchsorted(commas, ends)
    inside = _ranges(lo, hi)
    owner = np.repeat(np.arange(len(starts)), hi - lo)
    outside = ((np.searchsorted(quotes, commas[inside]) - first_quote[owner]) & 1) == 0
    return np.bincount(owner[outside], minlength=len(starts)) + 1


def _parse_fields(data: bytes, records: _Records, columns: _Columns) -> dict[int, pa.ChunkedArray]:
    """The needed fields of every record, by header position, parsed by pyarrow.

    A malformed record is read here first, as Python's csv module reads a line, and handed to
    pyarrow rewritten with the header's number of fields, each quoted.
    """
    irregular = np.flatnonzero(~records.regular).tolist()
    parsed = [_split_line(data[records.starts[r]:records.ends[r]].decode("utf-8")) for r in irregular]
    records.fields[irregular] = [len(p) for p in parsed]
    records.parsed = dict(zip(irregular, parsed, strict=True))
    if not columns.positions:
        return {}
    stop = int(records.line_ends[-1]) + 1
    if not irregular and stop <= len(data) and np.all(records.first[1:] == records.last[:-1] + 1):
        source, newlines = pa.py_buffer(data)[int(records.starts[0]):stop], records.spans  # the window, no copy
    else:
        rewritten = [",".join(f'"{f}"' for f in (p + [""] * columns.width)[:columns.width]).encode("utf-8")
                     for p in ([f.replace('"', '""') for f in p] for p in parsed)]
        newlines = records.spans or any(b"\n" in line or b"\r" in line for line in rewritten)
        source = pa.py_buffer(_with_rewritten(data, records, dict(zip(irregular, rewritten, strict=True))))
    names = {i: f"f{i}" for i in columns.positions}
    table = pacsv.read_csv(
        pa.BufferReader(source),
        read_options=pacsv.ReadOptions(autogenerate_column_names=True, block_size=1 << 20),
        parse_options=pacsv.ParseOptions(newlines_in_values=newlines),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(names.values()), column_types={name: pa.string() for name in names.values()},
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True, check_utf8=False),
        memory_pool=POOL,
    )
    if table.num_rows != records.count:
        raise RuntimeError(f"landing reader: pyarrow read {table.num_rows} records where {records.count} were found "
                           "(a bug in loopwise.landing.reader: report it with the landing file)")
    return {i: table.column(name) for i, name in names.items()}


def _with_rewritten(data: bytes, records: _Records, rewritten: dict[int, bytes]) -> bytes:
    """The window's well-formed records as they are, and each malformed one as rewritten."""
    regular, first, last = records.regular, records.first, records.last
    # A run of well-formed records on consecutive lines is copied as one slice.
    new_run = np.ones(records.count, bool)
    new_run[1:] = ~regular[1:] | ~regular[:-1] | (first[1:] != last[:-1] + 1)
    bounds = np.append(np.flatnonzero(new_run), records.count).tolist()
    view, pieces = memoryview(data), []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
        if regular[lo]:
            pieces += [view[int(records.starts[lo]):int(records.ends[hi - 1])], b"\n"]
        else:
            pieces += [rewritten[lo], b"\n"]
    return b"".join(pieces)


def _landed_rows(data: bytes, records: _Records, lines: _Lines) -> pa.Array:
    """Each record's bytes without its line terminator."""
    starts, ends = records.starts, records.ends
    offsets, offsets_view = _allocate(records.count + 1, np.int32)
    offsets_view[0] = 0
    np.cumsum(ends - starts, out=offsets_view[1:])
    body = _without_terminators(data, records, lines)
    if body is None or len(body) != offsets_view[-1]:
        body = _record_by_record(data, records)
    return pa.StringArray.from_buffers(records.count, offsets, pa.py_buffer(body))


def _without_terminators(data: bytes, records: _Records, lines: _Lines) -> bytearray | None:
    """The window's bytes with every record's line terminator taken out and the newlines inside quoted
    values kept: two or three passes of bytes.replace, some 5x faster than taking bytes out with numpy.

    None where the records do not all end alike (LF, or CR LF), or the last has no newline.
    """
    used = int(records.line_ends[-1]) + 1
    if used > len(data):
        return None
    crlf = int(np.count_nonzero(lines.content_ends[records.last] != lines.ends[records.last]))
    if crlf not in (0, records.count):
        return None
    with memoryview(data) as view:
        body = bytearray(view[:used])
    spans = np.flatnonzero(records.last != records.first)
    if len(spans):
        # Valid UTF-8 never holds the byte 0xFF: it stands in for the newlines inside values.
        inside = lines.ends[_ranges(records.first[spans], records.last[spans])]
        with memoryview(body) as view:
            np.frombuffer(view, np.uint8)[inside] = 0xFF
    body = body.replace(b"\r\n" if crlf else b"\n", b"")
    return body.replace(b"\xff", b"\n") if len(spans) else body


def _record_by_record(data: bytes, records: _Records) -> bytes:
    """The records' bytes, taken out of the window with numpy, whatever ends their lines."""
    a = np.frombuffer(data, np.uint8)
    gaps = _ranges(np.r_[0, records.ends], np.r_[records.starts, len(a)])
    return np.delete(a, gaps).tobytes()


def _extra_json(fields: dict[int, pa.ChunkedArray], records: _Records, columns: _Columns) -> pa.ChunkedArray:
    if not columns.extra:
        return _null_strings(records.count)
    objects = _json_objects([(name, fields[i]) for name, i in columns.extra], records.count)
    parsed = records.parsed
    short = [r for r, p in parsed.items() if any(i >= len(p) for _, i in columns.extra)]
    if not short:
        return pa.chunked_array([objects])
    # A record too short to reach a column has no key for it, as it had no value.
    values = [json.dumps({name: parsed[r][i] or None for name, i in columns.extra if i < len(parsed[r])},
                         ensure_ascii=False) for r in short]
    mask = np.zeros(records.count, bool)
    mask[short] = True
    return pa.chunked_array([pc.replace_with_mask(objects, _booleans(mask), _strings(values))])


def _split_line(text: str) -> list[str]:
    """The fields of one line as Python's csv module reads it (default dialect, not strict).

    For the header and for malformed records: a quote opens a value only at a field's start, text
    after a closing quote is kept, and a value still open at the end of the line ends there.
    """
    if not text:
        return []
    fields, i, n = [], 0, len(text)
    while True:
        if i < n and text[i] == '"':
            parts, i = [], i + 1
            while True:
                j = text.find('"', i)
                if j < 0:
                    parts.append(text[i:])
                    i = n
                    break
                parts.append(text[i:j])
                if j + 1 < n and text[j + 1] == '"':
                    parts.append('"')
                    i = j + 2
                else:
                    i = j + 1
                    break
            k = text.find(",", i)
            parts.append(text[i:] if k < 0 else text[i:k])
            fields.append("".join(parts))
        else:
            k = text.find(",", i)
            fields.append(text[i:] if k < 0 else text[i:k])
        if k < 0:
            return fields
        i = k + 1


# --- Parquet ---------------------------------------------------------------------------------------


def _read_parquet(path: Path, contract: SourceContract) -> tuple[list[str], list[pa.Table]]:
    import pyarrow.parquet as pq  # here: the CSV reader, and its benchmark, do without its memory

    source = pq.read_table(path)
    header, n = source.column_names, source.num_rows
    values = [_as_strings(source.column(i)) for i in range(source.num_columns)]
    by_name = dict(zip(header, values, strict=True))
    extra = [h for h in header if h not in contract.column_names]
    table = pa.table({
        **{c: by_name.get(c, _null_strings(n)) for c in contract.column_names},
        "_line": _numbers(np.arange(1, n + 1), np.int64),
        "_landed_row": _json_objects(list(zip(header, values, strict=True)), n),
        "_field_shortfall": _numbers(np.zeros(n, np.int32), np.int32),
        "_extra_columns": _json_objects([(h, by_name[h]) for h in extra], n) if extra else _null_strings(n),
    })
    return header, [table]


def _as_strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A Parquet column as strings; another type as Python's str() writes each value, as before."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    return pa.chunked_array([_strings([None if v is None else str(v) for v in column.to_pylist()])])


# --- Shared ----------------------------------------------------------------------------------------


def _json_objects(pairs: list[tuple[str, pa.ChunkedArray]], rows: int) -> pa.Array:
    """Per row, json.dumps({name: value, ...}, ensure_ascii=False) of string columns, vectorized."""
    merged = dict(pairs)  # a repeated name: its first position and its last value, as a dict has it
    if not merged:
        return _strings(["{}"] * rows)
    pieces: list[pa.Array | str] = []
    for k, (name, column) in enumerate(merged.items()):
        pieces += [("{" if k == 0 else ", ") + json.dumps(name, ensure_ascii=False) + ": ", _json_strings(column)]
    return pc.binary_join_element_wise(*(_text(p) if isinstance(p, str) else p for p in pieces), _text("}"),
                                       _text(""))


def _json_strings(column: pa.ChunkedArray) -> pa.Array:
    """Each value as a JSON string literal, `null` for null."""
    column = column.combine_chunks()
    special = pc.fill_null(pc.match_substring_regex(column, r'[\x00-\x1f"\\]'), _booleans(np.zeros(1, bool))[0])
    rows = np.flatnonzero(special.to_numpy(zero_copy_only=False))
    if len(rows):  # escapes are rare: json.dumps writes them
        escaped = [json.dumps(v, ensure_ascii=False)[1:-1] for v in column.take(_numbers(rows, np.int64)).to_pylist()]
        mask = np.zeros(len(column), bool)
        mask[rows] = True
        column = pc.replace_with_mask(column, _booleans(mask), _strings(escaped))
    quoted = pc.binary_join_element_wise(_text('"'), column, _text('"'), _text(""))
    return pc.coalesce(quoted, _text("null"))


# Arrays are built from their buffers in POOL's memory: pa.array() would import pandas, some 60 MB
# in a fresh process.


def _allocate(n: int, dtype: type[np.generic]) -> tuple[pa.Buffer, np.ndarray]:
    """An Arrow buffer of n values and a writable numpy view of it."""
    buffer = pa.allocate_buffer(n * np.dtype(dtype).itemsize, memory_pool=POOL)
    return buffer, np.frombuffer(buffer, dtype)


def _validity(valid: np.ndarray | None) -> pa.Buffer | None:
    if valid is None or valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def _numbers(values: np.ndarray, dtype: type[np.generic], valid: np.ndarray | None = None) -> pa.Array:
    buffer, view = _allocate(len(values), dtype)
    view[:] = values
    return pa.Array.from_buffers(pa.from_numpy_dtype(dtype), len(values), [_validity(valid), buffer])


def _booleans(values: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(np.packbits(values, bitorder="little"))])


def _strings(values: list[str | None]) -> pa.Array:
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    valid = np.array([v is not None for v in values], bool)
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [_validity(valid), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def _text(value: str) -> pa.Scalar:
    return _strings([value])[0]


@functools.cache
def _null_block() -> pa.Array:
    return pa.nulls(1 << 20, pa.string())


def _null_strings(n: int) -> pa.ChunkedArray:
    """n null strings that share one buffer of offsets, however many columns or windows ask."""
    block = _null_block()
    return pa.chunked_array([block.slice(i, min(len(block), n - i)) for i in range(0, n, len(block))], pa.string())


def _valid_rows(column: pa.Array) -> np.ndarray:
    """Which values are not null, as booleans."""
    if column.null_count == 0:
        return np.ones(len(column), bool)
    bits = np.frombuffer(column.buffers()[0], np.uint8)
    return np.unpackbits(bits, count=column.offset + len(column), bitorder="little")[column.offset:].astype(bool)


def _hash32(column: pa.Array) -> np.ndarray:
    """A 32-bit hash of each string, from its length and its first, middle and last 8 bytes."""
    n = len(column)
    if column.null_count == n:
        return np.zeros(n, np.uint32)
    offsets = np.frombuffer(column.buffers()[1], np.int32, n + 1, column.offset * 4).astype(np.int64)
    values = np.frombuffer(column.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    width = int(lengths[0])
    if lengths.min() == width == lengths.max():  # ids of one width, the usual case: slices, no gather
        padded = np.zeros((n, max(width, 8)), np.uint8)
        padded[:, :width] = values.reshape(n, width)
        at = (0, max(width // 2 - 4, 0), max(width - 8, 0))
        words = [np.ascontiguousarray(padded[:, i:i + 8]).view(np.uint64).ravel() for i in at]
    else:
        data = np.zeros(len(values) + 8, np.uint8)  # padded: every 8-byte read stays inside
        data[:-8] = values
        windows = np.lib.stride_tricks.as_strided(data, (len(data) - 7, 8), (1, 1))
        keep = np.where(lengths >= 8, ~np.uint64(0),
                        (np.uint64(1) << (8 * np.minimum(lengths, 7)).astype(np.uint64)) - np.uint64(1))
        at = (starts, starts + np.maximum(lengths // 2 - 4, 0), starts + np.maximum(lengths - 8, 0))
        words = [np.ascontiguousarray(windows[i]).view(np.uint64).ravel() & keep for i in at]
    h = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for word in words:
        h = (h ^ word) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return (h ^ (h >> np.uint64(32))).astype(np.uint32)


def _key_occurrence(keys: pa.ChunkedArray) -> pa.Array:
    """The how-many-th occurrence of each key in row order (null for a null key).

    Keys are hashed to 32 bits in numpy, twice over, rather than kept hashed while the file is
    read: the peak is the lower for it. Only rows whose hash repeats are compared exactly, in
    Python, so a file of unique keys costs two hashing passes and a sort of the hashes.
    """
    present, filled = np.empty(len(keys) - keys.null_count, np.uint32), 0
    for column in keys.chunks:
        hashes = _hash32(column)[_valid_rows(column)]
        present[filled:filled + len(hashes)] = hashes
        filled += len(hashes)
    present.sort()
    repeated = np.unique(present[1:][present[1:] == present[:-1]])
    del present
    # A 2**22-slot table of the repeated hashes' low bits rules out almost every row at once.
    maybe = np.zeros(1 << 22, bool)
    maybe[repeated & np.uint32((1 << 22) - 1)] = True
    occurrence_buffer, occurrence = _allocate(len(keys), np.int32)
    occurrence[:] = 1
    valid = np.ones(len(keys), bool)
    seen: dict[str, int] = {}
    at = 0
    for column in keys.chunks:
        valid[at:at + len(column)] = rows_valid = _valid_rows(column)
        if len(repeated):
            hashes = _hash32(column)
            rows = np.flatnonzero(rows_valid & maybe[hashes & np.uint32((1 << 22) - 1)])
            found = repeated[np.minimum(np.searchsorted(repeated, hashes[rows]), len(repeated) - 1)] == hashes[rows]
            rows = rows[found]
            for row, value in zip(rows.tolist(), column.take(_numbers(rows, np.int64)).to_pylist(), strict=True):
                seen[value] = seen.get(value, 0) + 1
                occurrence[at + row] = seen[value]
        at += len(column)
    return pa.Array.from_buffers(pa.int32(), len(keys), [_validity(valid), occurrence_buffer])
