"""Writing stage outputs: Parquet with an explicit schema and lineage metadata, all-or-nothing.

Every table carries key-value metadata ``dpinstruct.stage``, ``dpinstruct.params_hash`` and
``dpinstruct.privacy`` (one of PRIVACY_CLASSES). Parquet bytes are deterministic for the same
data and library versions: no timestamps, fixed compression and row-group size.

Outputs are staged: a stage writes every file to a temporary name inside ``Outputs`` and they are
renamed into place only when the block exits without error, so a failing stage leaves nothing
half-written behind (DVC has already removed the previous outputs by then).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PRIVACY_CLASSES = ("private", "dp", "public")
META_PREFIX = "dpinstruct."


def table_metadata(stage: str, params_hash: str, privacy: str, **extra) -> dict[str, str]:
    if privacy not in PRIVACY_CLASSES:
        raise ValueError(f"privacy class must be one of {PRIVACY_CLASSES}, got {privacy!r}")
    meta = {"stage": stage, "params_hash": params_hash, "privacy": privacy, **extra}
    return {META_PREFIX + k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in meta.items()}


def read_metadata(path: Path | str) -> dict[str, str]:
    raw = pq.read_schema(path).metadata or {}
    return {k.decode()[len(META_PREFIX):]: v.decode() for k, v in raw.items() if k.decode().startswith(META_PREFIX)}


def write_parquet(table: pa.Table, path: Path | str, schema: pa.Schema, metadata: dict[str, str]) -> None:
    table = table.select(schema.names).cast(schema).replace_schema_metadata(metadata)
    pq.write_table(table, path, compression="zstd", row_group_size=1 << 16, write_statistics=True)


def file_digest(path: Path | str) -> str:
    """sha256 of a file's bytes, streamed (model weights are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def read_table(path: Path | str) -> pa.Table:
    return pq.read_table(path)


class Outputs:
    """Context manager that stages output files and publishes them together on success.

    ``out.path("data/x.parquet")`` returns the temporary path to write to; on clean exit each is
    moved over its final name, on error every staged file is deleted.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}

    def path(self, final: Path | str) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        self._remove(tmp)
        self._staged[final] = tmp
        return tmp

    def write_parquet(self, table: pa.Table, final, schema: pa.Schema, metadata: dict[str, str]) -> None:
        write_parquet(table, self.path(final), schema, metadata)

    def write_json(self, obj, final) -> None:
        with open(self.path(final), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)  # strict JSON for every reader
            f.write("\n")

    def write_csv(self, df, final) -> None:
        """Plot data for `dvc plots`: plain CSV, header row, no index."""
        df.to_csv(self.path(final), index=False, lineterminator="\n")

    @staticmethod
    def _remove(p: Path) -> None:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for tmp in self._staged.values():
                self._remove(tmp)
            return
        for final, tmp in self._staged.items():
            self._remove(final)
            os.replace(tmp, final)
