"""The run key: everything that decides a DP mechanism's output, bound into its random streams.

A DP stage's streams (Poisson sampling, noise, rollouts) are HMAC-derived from the secret key and a
binding (``randomness.DPRandom.for_purpose``). If the binding left out anything that changes what
the mechanism computes (base weights, an adapter it starts from, a reward model, the code), two
runs differing only there would draw the SAME sample and the SAME noise on the same data with
another computation; publishing both would let an attacker subtract the noise out of any linear
statistic of the two. So the binding is the whole run key: the stage's name, the params it reads,
the content digest of every file or folder it reads (each dvc.yaml dep that is not code; a test
checks the two lists agree) and the digest of every project file its module imports.
Two runs share noise only if all of that is equal, i.e. they are the same run.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from dpinstruct.io.artifacts import file_digest
from dpinstruct.io.code_closure import code_files
from dpinstruct.io.errors import MissingInputError
from dpinstruct.io.params import params_hash

ROOT = Path(__file__).resolve().parents[2]


def tree_digest(path: Path | str) -> str:
    """sha256 of a file's bytes, or of a folder's (relative path, file digest) pairs in sorted order."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        raise MissingInputError(f"a DP stage's input {path} does not exist (run the stages before it: dvc repro)")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


def code_digest(stage: str) -> str:
    """One digest of every project file the stage's module runs (its import closure, the same set
    its dvc.yaml deps must cover)."""
    return closure_digest(ROOT / "stages" / f"{stage}.py")


def closure_digest(module: Path) -> str:
    """One digest of ``module`` and every project file it imports (a stage's, or a tool's)."""
    if not module.exists():
        raise MissingInputError(f"the run key needs the module {module}")
    files = sorted(code_files(ROOT, module))  # the same set as the stage's dvc.yaml code deps
    return params_hash(*(f"{f.as_posix()}:{file_digest(ROOT / f)}" for f in files))


def run_key(stage: str, params: tuple, inputs: tuple[Path | str, ...], *, module: str | None = None) -> tuple:
    """The binding of a run of ``stage``: (name, params hash, each input's digest, code digest).
    ``params`` are the params sections it reads; ``inputs`` every file or folder it reads;
    ``module`` the stage module when it differs from the stage's name (a foreach item)."""
    return (f"stage:{stage}", f"params:{params_hash(*params)}",
            *(f"input:{Path(p).as_posix()}:{tree_digest(p)}" for p in sorted(inputs, key=str)),
            f"code:{code_digest(module or stage)}")
