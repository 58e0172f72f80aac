"""Reading params.yaml as written, and a stable hash for lineage. Stages read their sections through
the typed models of ``dpinstruct.io.settings``; what they hash is the sections as written (``params_hash``)."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import yaml

PARAMS_FILE = Path("params.yaml")


def load(path: Path | str = PARAMS_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


INFINITY = {"inf", ".inf", "infinity"}


def spells_infinity(value) -> bool:
    """"inf", ".inf", "+Infinity", ...: the strings that stand for an infinite value (YAML reads an
    unquoted `.inf` as a float; `dvc exp run -S privacy.epsilon=inf` writes the string "inf")."""
    return isinstance(value, str) and value.strip().lower().lstrip("+") in INFINITY


def as_float(value) -> float:
    """`dvc exp run -S privacy.epsilon=8` writes the int 8 and YAML reads `.inf` as a float; accept both."""
    if spells_infinity(value):
        return math.inf
    return float(value)


def normalised(value):
    """The same params, numbers as floats: `dvc exp run -S privacy.epsilon=6` writes the int 6 where
    params.yaml has 6.0, and "inf" may stand for .inf; equal values must hash equally."""
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalised(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if spells_infinity(value):
        return math.inf
    return value


def params_hash(*sections: dict) -> str:
    """sha256 of the canonical JSON of the params a stage read (numbers normalised: 6 == 6.0);
    stored in every artifact it writes."""
    blob = json.dumps(normalised(sections), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
