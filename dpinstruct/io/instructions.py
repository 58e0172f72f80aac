"""Reading instruction files (JSONL, CSV or Parquet) with errors that point at the bad spot.

Accepted columns: ``instruction`` (required, string), ``id`` and ``user_id`` (optional). Other
columns are ignored. Errors name the file, the line (JSONL, CSV: physical line, header = line 1)
or row (Parquet, 1-based) and the field; they never quote the instruction text.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from dpinstruct.io.errors import InputError

REQUIRED, OPTIONAL = "instruction", ("id", "user_id")


@dataclass(frozen=True)
class Record:
    id: str
    instruction: str | None
    user_id: str | None
    where: str  # "line 12" / "row 3", for later error messages


def _text(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(path, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})", line=line) from None


def _record(obj: dict, path: Path, where: str) -> Record:
    if REQUIRED not in obj:
        raise InputError(f"{path}, {where}", "missing required field", field=REQUIRED)
    values = {}
    for field in (REQUIRED, *OPTIONAL):
        v = obj.get(field)
        if field != REQUIRED and isinstance(v, int) and not isinstance(v, bool):
            v = str(v)  # numeric ids are fine; keep them as text
        if v is not None and not isinstance(v, str):
            raise InputError(f"{path}, {where}", f"expected a string, got {type(v).__name__}", field=field)
        check_text(v, f"{path}, {where}", field)
        values[field] = v
    rid = values["id"] if values["id"] not in (None, "") else f"{path.stem}:{where.replace(' ', '')}"
    return Record(rid, values[REQUIRED], values["user_id"] or None, where)


def check_text(value: str | None, where: str, field: str) -> None:
    """Refuse text no instruction, id or answer holds: a NUL character (binary data, or a C-string
    bug upstream; tokenizers and Parquet readers downstream treat it inconsistently)."""
    if value is not None and "\x00" in value:
        raise InputError(where, f"contains a NUL character at offset {value.index(chr(0))}", field=field)


def _byte_lines(source):
    """Lines of bytes or of an open binary file, split on b"\n" only (str.splitlines() would also
    break on U+2028 etc., which JSON strings may hold); a file is read one line at a time."""
    if isinstance(source, bytes):
        yield from source.split(b"\n")
    else:
        for line in source:
            yield line[:-1] if line.endswith(b"\n") else line


def json_objects(path: Path, source):
    """(line number, object) of each non-blank line of a JSON Lines file's bytes or open binary file;
    ``InputError`` naming the line for bad UTF-8, malformed JSON or a value that is not an object."""
    offset = 0
    for n, raw in enumerate(_byte_lines(source), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(path, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {offset + e.start})",
                             line=n) from None
        offset += len(raw) + 1
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"malformed JSON ({e.msg} at column {e.colno})", line=n) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", line=n)
        yield n, obj


def _read_jsonl(path: Path) -> list[Record]:
    with open(path, "rb") as f:  # streamed: a 1M-row file is never held as bytes and text at once
        return [_record(obj, path, f"line {n}") for n, obj in json_objects(path, f)]


def _read_csv(path: Path) -> list[Record]:
    reader = csv.DictReader(io.StringIO(_text(path.read_bytes(), path), newline=""))
    if reader.fieldnames is None or REQUIRED not in reader.fieldnames:
        raise InputError(path, f"header has no '{REQUIRED}' column (found {reader.fieldnames})", line=1, field=REQUIRED)
    out = []
    for obj in reader:
        line = reader.line_num  # last physical line of this record (records may span lines)
        if None in obj:
            raise InputError(path, "more values than header columns", line=line)
        out.append(_record({k: (v if v != "" or k == REQUIRED else None) for k, v in obj.items()},
                           path, f"line {line}"))
    return out


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise InputError(path, f"not a readable Parquet file ({type(e).__name__}: {e})") from None
    if REQUIRED not in table.column_names:
        raise InputError(path, f"no '{REQUIRED}' column (found {table.column_names})", field=REQUIRED)
    cols = [c for c in (REQUIRED, *OPTIONAL) if c in table.column_names]
    return [_record(obj, path, f"row {i + 1}") for i, obj in enumerate(table.select(cols).to_pylist())]


READERS = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}


def read_instructions(path: Path | str) -> list[Record]:
    """All records of an instruction file, in file order; ids are unique (checked here)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(path, f"a symbolic link to {path.readlink()}, which does not exist")
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a regular file")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(path, f"unsupported file type '{path.suffix}' (use one of {sorted(READERS)})")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    records = reader(path)
    if not records:
        raise InputError(path, "file has no records")
    first_seen: dict[str, str] = {}
    for r in records:
        if r.id in first_seen:
            raise InputError(f"{path}, {r.where}", f"duplicate id (first at {first_seen[r.id]})", field="id")
        first_seen[r.id] = r.where
    return records
