"""Reading instruction files (JSONL, CSV, Parquet): records in file order, ids kept or made up from
the file and line, and refusals that name the file, the line or row and the field, never the text.
(The prepare stage's tests run the same refusals end to end: tests/stages/test_prepare.py,
tests/stages/test_hostile_inputs.py.)"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpinstruct.io.errors import InputError
from dpinstruct.io.instructions import Record, check_text, json_objects, read_instructions

SECRET = "sourdough"  # every instruction below mentions it: no error may quote it


def jsonl(path, *objects, raw: bytes = b""):
    path.write_bytes(b"".join(json.dumps(o).encode() + b"\n" for o in objects) + raw)
    return path


def refused(path, pattern: str) -> str:
    with pytest.raises(InputError, match=pattern) as err:
        read_instructions(path)
    assert SECRET not in str(err.value)
    return str(err.value)


# --- what is read --------------------------------------------------------------------------------

def test_jsonl_records_in_file_order_with_ids_users_and_where(tmp_path):
    path = jsonl(tmp_path / "x.jsonl",
                 {"id": "a", "instruction": f"bake {SECRET}", "user_id": "u1", "extra": [1, 2]},
                 {"id": 7, "instruction": f"slice {SECRET}", "user_id": 42},
                 {"id": "", "instruction": f"store {SECRET}", "user_id": ""})
    assert read_instructions(path) == [
        Record("a", f"bake {SECRET}", "u1", "line 1"),
        Record("7", f"slice {SECRET}", "42", "line 2"),      # numeric ids are kept as text
        Record("x:line3", f"store {SECRET}", None, "line 3"),  # no id (""): file stem and line; "" user: none
    ]


def test_blank_lines_are_skipped_but_still_counted(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"instruction": "one"}\n\n   \n{"instruction": "two"}\n')
    assert [(r.id, r.where) for r in read_instructions(path)] == [("x:line1", "line 1"), ("x:line4", "line 4")]


def test_a_line_separator_inside_a_json_string_does_not_split_the_record(tmp_path):
    text = f"first\u2028second\u0085third {SECRET}"
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": "a", "instruction": text}, ensure_ascii=False) + "\n"
                    + json.dumps({"id": "b", "instruction": "next"}) + "\n", encoding="utf-8")
    records = read_instructions(path)
    assert [r.instruction for r in records] == [text, "next"] and records[1].where == "line 2"


def test_csv_ids_lines_and_empty_optional_fields(tmp_path):
    path = tmp_path / "x.csv"
    # a quoted field spanning two physical lines: the record is named by its last line
    path.write_text(f'instruction,id,user_id,ignored\n"two\nlines {SECRET}",r1,u1,z\nplain,,,\n"",r3,,\n')
    records = read_instructions(path)
    assert records == [Record("r1", f"two\nlines {SECRET}", "u1", "line 3"),
                       Record("x:line4", "plain", None, "line 4"),
                       Record("r3", "", None, "line 5")]  # an empty instruction is "", for cleaning to drop


def test_parquet_rows_are_one_based_and_other_columns_ignored(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": ["ignored", "ignored"], "instruction": [f"a {SECRET}", None],
                             "id": pa.array([5, 6], pa.int64())}), path)
    assert read_instructions(path) == [Record("5", f"a {SECRET}", None, "row 1"), Record("6", None, None, "row 2")]


def test_the_suffix_is_case_insensitive_and_json_is_json_lines(tmp_path):
    for name in ("x.JSONL", "y.json"):
        path = jsonl(tmp_path / name, {"instruction": "hi"})
        assert [r.instruction for r in read_instructions(str(path))] == ["hi"]


# --- what is refused, and where ------------------------------------------------------------------

@pytest.mark.parametrize("objects, raw, pattern", [
    ([{"instruction": "ok"}], b'{"instruction": \n', r"x\.jsonl, line 2: malformed JSON \(.* at column \d+\)"),
    ([{"instruction": "ok"}], b'["a list"]\n', r"x\.jsonl, line 2: expected a JSON object, got list"),
    ([{"instruction": "ok"}, {"id": "b", "text": SECRET}], b"",
     r"x\.jsonl, line 2, field 'instruction': missing required field"),
    ([{"instruction": ["not", SECRET]}], b"", r"x\.jsonl, line 1, field 'instruction': expected a string, got list"),
    ([{"instruction": SECRET, "id": True}], b"", r"line 1, field 'id': expected a string, got bool"),
    ([{"instruction": SECRET, "user_id": 1.5}], b"", r"line 1, field 'user_id': expected a string, got float"),
    ([{"instruction": f"{SECRET}\x00x"}], b"",
     r"x\.jsonl, line 1, field 'instruction': contains a NUL character at offset 9$"),
    ([{"id": "a", "instruction": SECRET}, {"instruction": "x"}, {"id": "a", "instruction": SECRET}], b"",
     r"x\.jsonl, line 3, field 'id': duplicate id \(first at line 1\)"),
])
def test_jsonl_refusals_name_line_and_field(tmp_path, objects, raw, pattern):
    refused(jsonl(tmp_path / "x.jsonl", *objects, raw=raw), pattern)


def test_bad_utf8_names_the_line_and_the_byte_offset_in_the_file(tmp_path):
    first = b'{"instruction": "fine"}\n'
    path = tmp_path / "x.jsonl"
    path.write_bytes(first + b'{"instruction": "caf\xe9 ' + SECRET.encode() + b'"}\n')
    offset = len(first) + len(b'{"instruction": "caf')
    refused(path, rf"x\.jsonl, line 2: not valid UTF-8 \(byte 0xe9 at offset {offset}\)")
    csv = tmp_path / "x.csv"
    csv.write_bytes(b"instruction\nfine\ncaf\xe9\n")
    refused(csv, r"x\.csv, line 3: not valid UTF-8 \(byte 0xe9 at offset 20\)")


def test_a_made_up_id_that_collides_with_a_given_one_is_a_duplicate(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", {"id": "x:line2", "instruction": SECRET}, {"instruction": SECRET})
    refused(path, r"line 2, field 'id': duplicate id \(first at line 1\)")


@pytest.mark.parametrize("content, pattern", [
    (b"id,text\n1,hello\n",
     r"x\.csv, line 1, field 'instruction': header has no 'instruction' column \(found \['id', 'text'\]\)"),
    (b"instruction,id\nok,1\n" + SECRET.encode() + b",2,3\n", r"x\.csv, line 3: more values than header columns"),
    (b"\n", r"x\.csv, line 1, field 'instruction': header has no 'instruction' column \(found \[\]\)"),
    (b"instruction\n", r"x\.csv: file has no records"),
])
def test_csv_refusals(tmp_path, content, pattern):
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    refused(path, pattern)


@pytest.mark.parametrize("columns, pattern", [
    ({"text": [SECRET]}, r"x\.parquet, field 'instruction': no 'instruction' column \(found \['text'\]\)"),
    ({"instruction": ["ok", SECRET, "x"], "id": ["a", "b", "a"]},
     r"x\.parquet, row 3, field 'id': duplicate id \(first at row 1\)"),
    ({"instruction": [2.5, 3.0]}, r"x\.parquet, row 1, field 'instruction': expected a string, got float"),
])
def test_parquet_refusals_name_the_row(tmp_path, columns, pattern):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table(columns), path)
    refused(path, pattern)


def test_file_level_refusals(tmp_path):
    refused(tmp_path / "absent.jsonl", r"absent\.jsonl: file not found")
    (tmp_path / "dir.jsonl").mkdir()
    refused(tmp_path / "dir.jsonl", r"dir\.jsonl: not a regular file")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "gone.jsonl")
    refused(tmp_path / "link.jsonl", r"link\.jsonl: a symbolic link to .*gone\.jsonl, which does not exist")
    (tmp_path / "x.txt").write_text(SECRET)
    refused(tmp_path / "x.txt", r"x\.txt: unsupported file type '\.txt' \(use one of \['\.csv', '\.json', "
                                r"'\.jsonl', '\.parquet'\]\)")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    refused(tmp_path / "empty.jsonl", r"empty\.jsonl: file is empty")
    (tmp_path / "blank.jsonl").write_bytes(b"\n  \n")
    refused(tmp_path / "blank.jsonl", r"blank\.jsonl: file has no records")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really " + SECRET.encode())
    refused(tmp_path / "bad.parquet", r"bad\.parquet: not a readable Parquet file \(")


# --- the helpers other readers share (preferences) -------------------------------------------------

def test_json_objects_streams_a_file_and_reads_bytes_alike(tmp_path):
    content = b'{"a": 1}\n\n{"b": 2}'  # no newline at the end
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with open(path, "rb") as f:
        streamed = list(json_objects(path, f))
    assert streamed == list(json_objects(path, content)) == [(1, {"a": 1}), (3, {"b": 2})]


def test_check_text_accepts_none_and_names_where_and_field():
    check_text(None, "f.jsonl, line 1", "chosen")
    check_text("fine", "f.jsonl, line 1", "chosen")
    with pytest.raises(InputError, match=r"^f\.jsonl, line 4, field 'chosen': contains a NUL character at offset 2$"):
        check_text("ab\x00", "f.jsonl, line 4", "chosen")
