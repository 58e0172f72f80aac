"""Spies the stage tests share: they record what the real code does and change none of it."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dpinstruct.privacy.randomness import DPRandom


def record_streams(mp: pytest.MonkeyPatch) -> dict[str, list]:
    """Every DP stream a stage asks for, by purpose (dp_sft/poisson, dp_ppo/rollouts, ...): the
    real ``DPRandom.for_purpose`` runs, and each stream it returns is kept."""
    seen, real = {}, DPRandom.for_purpose.__func__

    def for_purpose(cls, purpose, *binding, privacy):
        stream = real(cls, purpose, *binding, privacy=privacy)
        seen.setdefault(purpose, []).append(stream)
        return stream

    mp.setattr(DPRandom, "for_purpose", classmethod(for_purpose))
    return seen


# --- files a stage reads ---------------------------------------------------------------------------
# Python's open() raises the audit event "open"; pyarrow reads parquet in C++, which raises none, so
# its readers are wrapped too. Model weights load in Rust (safetensors), but every model folder also
# has a JSON config that Python opens, so a folder read is seen.
_RECORDERS: list[dict[str, set]] = []


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _RECORDERS or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = args
    writes = (any(c in mode for c in "wax+") if isinstance(mode, str)
              else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
    path = os.path.abspath(os.fsdecode(path))
    # A read is of an existing file. A folder opened as such is being listed or removed (shutil.rmtree
    # opens each one, by a name relative to its parent's descriptor, which the event does not carry),
    # not read: what a stage learns from a folder comes from its files, recorded themselves.
    if not writes and not os.path.isfile(path):
        return
    for recorder in _RECORDERS:
        recorder["written" if writes else "read"].add(path)


sys.addaudithook(_audit)


@contextmanager
def record_reads() -> Iterator[dict[str, set]]:
    """{"read": paths opened for reading, "written": paths opened for writing, "bound": the inputs whose
    digest (``run_key``'s ``input:<path>:<digest>``) reached the binding of a DP stream} while the
    block runs; absolute, symlinks NOT resolved (a project's model folder may link outside it). An
    input digested into a key the stage then does not hand to its streams is not bound."""
    from dpinstruct.privacy import run_key

    recorder = {"read": set(), "written": set(), "bound": set()}
    real_digest, real_for_purpose = run_key.tree_digest, DPRandom.for_purpose.__func__
    digested, bindings = [], []

    def tree_digest(path):
        digested.append(path)
        return real_digest(path)

    def for_purpose(cls, purpose, *binding, privacy):
        bindings.append([str(b) for b in binding])
        return real_for_purpose(cls, purpose, *binding, privacy=privacy)

    def wrap(real):
        def reader(source, *args, **kwargs):
            if isinstance(source, (str, os.PathLike)):
                recorder["read"].add(os.path.abspath(source))
            return real(source, *args, **kwargs)
        return reader

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_key, "tree_digest", tree_digest)
        mp.setattr(DPRandom, "for_purpose", classmethod(for_purpose))
        for name in ("read_table", "read_schema", "read_metadata"):
            mp.setattr(pq, name, wrap(getattr(pq, name)))
        _RECORDERS.append(recorder)
        try:
            yield recorder
        finally:
            _RECORDERS.remove(recorder)
            recorder["bound"].update(os.path.abspath(p) for p in digested
                                     if any(b.startswith(f"input:{Path(p).as_posix()}:") for bs in bindings for b in bs))


def unbound_reads(recorder: dict[str, set], root, *, own: tuple[str, ...] = ()) -> list[str]:
    """Files under ``root`` the stage read that no input of its run key covers: each is something that
    decides the mechanism's output without being bound into its noise. ``own``: the stage's own
    folders (its checkpoints, DVCLive) that it reads back; files it wrote itself are skipped too."""
    root = os.path.abspath(root)
    covers = [*recorder["bound"], *(os.path.join(root, o) for o in own)]
    key = os.environ.get("DPINSTRUCT_KEY_FILE")
    # (a folder from pyarrow's readers stays: pyarrow reads its files in C++, unseen by the hook)
    return sorted(os.path.relpath(p, root) for p in recorder["read"]
                  if p.startswith(root + os.sep) and p not in recorder["written"]
                  and p != (os.path.abspath(key) if key else None)
                  and not any(p == c or p.startswith(c.rstrip(os.sep) + os.sep) for c in covers))
