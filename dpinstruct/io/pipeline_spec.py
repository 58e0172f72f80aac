"""dvc.yaml read as plain YAML, ``foreach`` stages expanded (``name@key``, ``${key}`` and
``${item.field}`` substituted), for the code that needs the declarations without DVC itself
(``account`` composes the mechanisms that ``meta.dp_dataset`` assigns to each dataset)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from dpinstruct.io.errors import PipelineError

ROOT = Path(__file__).resolve().parents[2]  # the checkout whose code runs: DVC runs stages from it
_VAR = re.compile(r"\$\{(key|item(?:\.[A-Za-z_]\w*)?)\}")


def _substitute(value, key: str, item):
    if isinstance(value, dict):
        return {k: _substitute(v, key, item) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, key, item) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name = m.group(1)
        if name == "key":
            return key
        return str(item if name == "item" else item[name.split(".", 1)[1]])

    whole = _VAR.fullmatch(value)
    if whole and whole.group(1).startswith("item.") and not isinstance(item[whole.group(1)[5:]], str):
        return item[whole.group(1)[5:]]  # a whole non-string value keeps its type, as in DVC
    return _VAR.sub(one, value)


def stages(root: Path | str = ROOT) -> dict[str, dict]:
    """Every stage of dvc.yaml by name, foreach stages as one entry per item (``name@key``)."""
    raw = yaml.safe_load((Path(root) / "dvc.yaml").read_text(encoding="utf-8")).get("stages", {})
    out = {}
    for name, spec in raw.items():
        if "foreach" not in spec:
            out[name] = spec
            continue
        items = spec["foreach"]
        pairs = items.items() if isinstance(items, dict) else ((str(i), i) for i in items)
        for key, item in pairs:
            out[f"{name}@{key}"] = _substitute(spec["do"], str(key), item)
    return out


def dp_mechanisms(root: Path | str = ROOT) -> dict[str, str]:
    """Each DP mechanism stage (``meta.dp_mechanism``) -> the dataset it spends (``meta.dp_dataset``)."""
    found = {}
    for name, spec in stages(root).items():
        meta = spec.get("meta") or {}
        if meta.get("dp_mechanism"):
            if not meta.get("dp_dataset"):
                raise PipelineError(f"dvc.yaml, stage {name}: a dp_mechanism stage must name its meta.dp_dataset")
            found[name] = meta["dp_dataset"]
    return found
