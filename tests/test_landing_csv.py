"""Landing CSV files read as RFC 4180 has them, a record per row, the malformed ones kept whole."""

import csv
import io
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loopwise.contracts import Column, SourceContract
from loopwise.landing import reader, zone

THINGS = SourceContract(
    name="things",
    key="thing_id",
    event_time="seen_at",
    columns=(
        Column("thing_id", "id"),
        Column("owner_id", "id"),
        Column("seen_at", "timestamp"),
        Column("amount", "amount"),
        Column("note", "text", required=False),
    ),
)
HEADER = b"thing_id,owner_id,seen_at,amount,note\n"
CONTRACT_COLUMNS = ["thing_id", "owner_id", "seen_at", "amount", "note"]


def read(tmp_path: Path, data: bytes, name: str = "2026-03-02.csv") -> zone.LandedTable:
    path = tmp_path / name
    path.write_bytes(data)
    return zone.read_landing_file(path, THINGS)


def rows(landed: zone.LandedTable) -> list[dict]:
    return landed.table.to_pylist()


def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path: Path) -> None:
    landed = read(tmp_path, b"\xef\xbb\xbf" + HEADER + b"T1,O1,2026-03-02 10:00:00,12.50,\n")
    assert landed.missing_columns == [] and landed.extra_columns == []
    assert rows(landed)[0]["thing_id"] == "T1"


def test_a_quoted_newline_stays_in_one_record_numbered_by_its_first_line(tmp_path: Path) -> None:
    data = HEADER + (b'T1,O1,2026-03-02 10:00:00,1.00,"ring twice\nthen wait"\n'
                     b"T2,O2,2026-03-02 10:01:00,2.00,\n")
    got = rows(read(tmp_path, data))
    assert [r["_line"] for r in got] == [1, 3]  # T2 is on the file's third line after the header
    assert got[0]["note"] == "ring twice\nthen wait"
    assert got[0]["_landed_row"] == 'T1,O1,2026-03-02 10:00:00,1.00,"ring twice\nthen wait"'
    assert [r["_field_shortfall"] for r in got] == [0, 0]


def test_quotes_and_commas_inside_a_quoted_field_are_its_text(tmp_path: Path) -> None:
    got = rows(read(tmp_path, HEADER + b'T1,O1,2026-03-02 10:00:00,1.00,"say ""hi"", then go"\n'))
    assert got[0]["note"] == 'say "hi", then go'
    assert got[0]["_field_shortfall"] == 0


def test_crlf_line_endings_are_not_part_of_the_record(tmp_path: Path) -> None:
    data = (HEADER.replace(b"\n", b"\r\n") + b"T1,O1,2026-03-02 10:00:00,1.00,plain\r\n"
            + b'T2,O2,2026-03-02 10:01:00,2.00,"two\r\nlines"\r\n')
    got = rows(read(tmp_path, data))
    assert [r["note"] for r in got] == ["plain", "two\r\nlines"]
    assert got[0]["_landed_row"] == "T1,O1,2026-03-02 10:00:00,1.00,plain"
    assert [r["_line"] for r in got] == [1, 2]


def test_a_field_over_pythons_128_kib_limit_is_read(tmp_path: Path) -> None:
    long_text = "x" * 300_000
    data = HEADER + f'T1,O1,2026-03-02 10:00:00,1.00,"{long_text}\n{long_text}"\n'.encode() + b"T2,O2,,,\n"
    got = rows(read(tmp_path, data))
    assert got[0]["note"] == f"{long_text}\n{long_text}"
    assert [r["thing_id"] for r in got] == ["T1", "T2"]


MALFORMED = HEADER + (
    b"T1,O1,2026-03-02 10:00:00,1.00,fine\n"
    b"T2,O2,2026-03-02 10:0\n"  # truncated: two fields short
    b'T3,O3,"2026-03-02 10:02:00,3.00,stray quote never closed\n'
    b"T4,O4,2026-03-02 10:03:00,4.00,fine\n"
    b"T5,O5,2026-03-02 10:04:00,5.00,one,too many\n"
    b'T6,O6,2026-03-02 10:05:00,6.00,"a value\nover two lines"\n'
    b"T7,O7,2026-03-02 10:06:00,7.00,fine"  # the last line, without a newline
)


def test_a_malformed_record_is_one_row_and_the_clean_rows_around_it_are_kept(tmp_path: Path) -> None:
    got = rows(read(tmp_path, MALFORMED))
    assert [r["thing_id"] for r in got] == ["T1", "T2", "T3", "T4", "T5", "T6", "T7"]  # records landed = rows
    assert [r["_line"] for r in got] == [1, 2, 3, 4, 5, 6, 8]
    assert [r["_field_shortfall"] for r in got] == [0, 2, 2, 0, -1, 0, 0]  # validation quarantines the non-zero
    assert got[1]["_landed_row"] == "T2,O2,2026-03-02 10:0"
    assert got[2]["_landed_row"] == 'T3,O3,"2026-03-02 10:02:00,3.00,stray quote never closed'
    assert got[5]["note"] == "a value\nover two lines"
    assert got[6]["note"] == "fine"


def test_a_stray_quote_cannot_swallow_the_rows_after_it(tmp_path: Path) -> None:
    # The quote left open on line 1 could be closed by the one that opens line 3's value: read so,
    # lines 1-3 would be one record of two fields, so line 1 is read alone instead.
    data = HEADER + (b'T1,O1,"2026-03-02 10:00:00,1.00,oops\n'
                     b"T2,O2,2026-03-02 10:01:00,2.00,fine\n"
                     b'T3,O3,2026-03-02 10:02:00,3.00,"\nstarts with a newline"\n')
    got = rows(read(tmp_path, data))
    assert [(r["thing_id"], r["_line"], r["_field_shortfall"]) for r in got] == [("T1", 1, 2), ("T2", 2, 0), ("T3", 3, 0)]
    assert got[2]["note"] == "\nstarts with a newline"


def test_bytes_that_are_not_utf8_stay_visible(tmp_path: Path) -> None:
    data = HEADER + b"T1,O1,2026-03-02 10:00:00,1.00,Gr\xfc\xdfe\nT2,O2,2026-03-02 10:01:00,2.00,fine\n"
    got = rows(read(tmp_path, data))
    assert "\ufffd" in got[0]["_landed_row"] and "\ufffd" in got[0]["note"]
    assert got[1]["note"] == "fine"


def test_key_occurrence_counts_each_key_in_file_order(tmp_path: Path) -> None:
    data = HEADER + b"".join(f"{key},O,,,\n".encode() for key in ["A", "B", "A", "", "A", "B"])
    assert [r["_key_occurrence"] for r in rows(read(tmp_path, data))] == [1, 1, 2, None, 3, 2]


def test_empty_fields_are_null_and_a_blank_line_is_no_record(tmp_path: Path) -> None:
    data = HEADER + b'T1,,"",1.00,\n\n   \nT2,O2,2026-03-02 10:00:00,2.00,x\n'
    got = rows(read(tmp_path, data))
    assert [(r["owner_id"], r["seen_at"], r["note"]) for r in got] == [(None, None, None), ("O2", "2026-03-02 10:00:00", "x")]
    assert [r["_line"] for r in got] == [1, 4]  # lines keep their numbers in the file


def test_extra_and_missing_columns_are_reported_and_kept(tmp_path: Path) -> None:
    landed = read(tmp_path, b'thing_id,owner_id,seen_at,amount,note,coupon\nT1,O1,,1.00,,"SPRING, 10%"\nT2,O2\n')
    assert landed.extra_columns == ["coupon"] and landed.missing_columns == []
    assert [r["_extra_columns"] for r in rows(landed)] == ['{"coupon": "SPRING, 10%"}', "{}"]
    landed = read(tmp_path, b"thing_id,seen_at,amount\nT1,2026-03-02 10:00:00,1.00\n")
    assert landed.missing_columns == ["owner_id", "note"]
    assert rows(landed)[0]["owner_id"] is None and rows(landed)[0]["_field_shortfall"] == 0


def test_the_table_keeps_its_columns_and_types(tmp_path: Path) -> None:
    schema = read(tmp_path, MALFORMED).table.schema
    assert schema.names == [*CONTRACT_COLUMNS, "_line", "_landed_row", "_field_shortfall", "_extra_columns",
                            "_key_occurrence"]
    assert [schema.field(c).type for c in schema.names[len(CONTRACT_COLUMNS):]] == [
        pa.int64(), pa.string(), pa.int32(), pa.string(), pa.int32()]
    assert all(schema.field(c).type == pa.string() for c in CONTRACT_COLUMNS)


def _random_file(rng: random.Random, rows: int) -> bytes:
    """Well-formed records with quotes, commas and line breaks in values, and malformed lines."""
    values = ["", "plain", "a,b", 'say "hi"', "two\nlines", "cr\r\nlf", "é ü", '"', ",", "x" * 40]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CONTRACT_COLUMNS)
    for i in range(rows):
        kind = rng.random()
        if kind < 0.08:
            out.write(f"T{i},O{i},2026-03-02 10:0\n")  # truncated
        elif kind < 0.12:
            out.write(f'T{i},O{i},"never closed,1.00,x\n')
        elif kind < 0.15:
            out.write("\n")
        else:
            writer.writerow([f"T{rng.randrange(rows)}", f"O{i}", "2026-03-02 10:00:00", f"{i}.00", rng.choice(values)])
    return out.getvalue().encode()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reading_in_small_windows_gives_the_same_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        seed: int) -> None:
    data = _random_file(random.Random(seed), 400)
    whole = read(tmp_path, data).table
    monkeypatch.setattr(reader, "WINDOW_BYTES", 64)  # records and quoted values cross every window
    assert read(tmp_path, data).table.equals(whole)


def test_well_formed_records_read_as_pythons_csv_module_reads_them(tmp_path: Path) -> None:
    rng = random.Random(5)
    values = ["", "plain", "a,b", 'say "hi", twice ""', "two\nlines", "cr\r\nlf", "é ü", "x" * 300]
    records = [[rng.choice(values) for _ in CONTRACT_COLUMNS] for _ in range(300)]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([CONTRACT_COLUMNS, *records])
    got = rows(read(tmp_path, out.getvalue().encode()))
    assert [[r[c] for c in CONTRACT_COLUMNS] for r in got] == [[v or None for v in rec] for rec in records]
    assert all(r["_field_shortfall"] == 0 for r in got)


FIELD = r'(?:"(?:[^"]|"")*"|[^",\r\n]*)'
RFC_4180_RECORD = re.compile(rf"{FIELD}(?:,{FIELD})*")


def _reference(data: bytes) -> list[tuple[int, str, list[str]]]:
    """(first line, landed text, fields) per record, by the reader's rules, a line at a time."""
    lines = data.decode("utf-8").split("\n")
    width = len(next(csv.reader([lines[0].removesuffix("\r")])))
    body = lines[1:-1] if lines[-1] == "" else lines[1:]
    odd = [line.count('"') % 2 == 1 for line in body]
    records, i = [], 0
    while i < len(body):
        text, last = body[i].removesuffix("\r"), i
        if odd[i]:  # it opens a value: the next line of odd quotes closes it, if reading so makes one record
            close = next((j for j in range(i + 1, len(body)) if odd[j]), None)
            span = "\n".join(body[i:close + 1]).removesuffix("\r") if close is not None else ""
            if close is not None and RFC_4180_RECORD.fullmatch(span) and \
                    len(next(csv.reader(io.StringIO(span, newline="")))) == width:
                text, last = span, close
        if text.strip():
            fields = next(csv.reader(io.StringIO(text, newline="")) if last > i else csv.reader([text]))
            records.append((i + 1, text, fields))
        i = last + 1
    return records


@pytest.mark.parametrize("seed", range(6))
def test_the_reader_follows_its_rules_on_random_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      seed: int) -> None:
    rng = random.Random(seed)
    tokens = ["a", "bb", ",", ",", '"', '""', " ", "é", '"x,y"', '"m\nn"', "1"]
    for _ in range(30):
        out = io.StringIO()
        out.write(",".join(CONTRACT_COLUMNS) + rng.choice(["\n", "\r\n"]))
        for _ in range(rng.randint(0, 15)):
            if rng.random() < 0.5:
                csv.writer(out, lineterminator=rng.choice(["\n", "\r\n"])).writerow(
                    [rng.choice(["", "a", "b,c", 'q"q', "l\nm", "x\r\ny"]) for _ in range(rng.choice([5, 5, 4, 6]))])
            else:
                out.write("".join(rng.choice(tokens) for _ in range(rng.randint(0, 8))) + "\n")
        data = out.getvalue().encode()
        monkeypatch.setattr(reader, "WINDOW_BYTES", rng.choice([16, 1 << 20]))
        got = [(r["_line"], r["_landed_row"], r["_field_shortfall"], [r[c] for c in CONTRACT_COLUMNS])
               for r in rows(read(tmp_path, data))]
        expected = [(line, text, len(CONTRACT_COLUMNS) - len(fields),
                     [(fields[k] if k < len(fields) else "") or None for k in range(len(CONTRACT_COLUMNS))])
                    for line, text, fields in _reference(data)]
        assert got == expected, data


def test_parquet_files_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "2026-03-02.parquet"
    pq.write_table(pa.table({
        "thing_id": pa.array(["T1", "T2", "T1"]),
        "owner_id": pa.array(["O1", None, ""]),
        "seen_at": pa.array(["2026-03-02 10:00:00", 'say "hi"\n', "x"]),
        "amount": pa.array([12, None, 3], pa.int64()),  # not a string column: str() of each value
        "coupon": pa.array(["SPRING", None, "é"]),
    }), path)
    landed = zone.read_landing_file(path, THINGS)
    got = rows(landed)
    assert landed.missing_columns == ["note"] and landed.extra_columns == ["coupon"]
    assert [r["amount"] for r in got] == ["12", None, "3"]
    assert [r["owner_id"] for r in got] == ["O1", None, ""]
    assert got[1]["_landed_row"] == json.dumps({"thing_id": "T2", "owner_id": None, "seen_at": 'say "hi"\n',
                                                "amount": None, "coupon": None}, ensure_ascii=False)
    assert [r["_extra_columns"] for r in got] == ['{"coupon": "SPRING"}', '{"coupon": null}', '{"coupon": "é"}']
    assert [(r["_line"], r["_field_shortfall"], r["_key_occurrence"]) for r in got] == [(1, 0, 1), (2, 0, 1), (3, 0, 2)]
