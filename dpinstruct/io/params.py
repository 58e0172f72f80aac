"""Reading params.yaml: one section per stage, numbers coerced, and a stable hash for lineage."""
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


def section(params: dict, name: str) -> dict:
    """The params of one stage; a missing section is a configuration error worth naming."""
    if name not in params:
        raise KeyError(f"params.yaml has no '{name}' section")
    return params[name]


def as_float(value) -> float:
    """`dvc exp run -S privacy.epsilon=8` writes the int 8 and YAML reads `.inf` as a float; accept both."""
    if isinstance(value, str) and value.strip().lower().lstrip("+") in {"inf", ".inf", "infinity"}:
        return math.inf
    return float(value)


def params_hash(*sections: dict) -> str:
    """sha256 of the canonical JSON of the params a stage read; stored in every artifact it writes."""
    blob = json.dumps(sections, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
