"""Human preference pairs (Anthropic HH-RLHF, harmless-base) for the reward model of task (ii).

A line of the raw file is one comparison: a JSON object whose ``chosen`` and ``rejected`` strings are
the same dialogue ("\\n\\nHuman: ... \\n\\nAssistant: ...") up to the final assistant turn, where the
crowdworker preferred ``chosen``. A comparison is the privacy unit of the reward model (Wu et al.,
task (ii)): ``id`` is a hash of the line's two texts.

``read_pairs`` refuses a file it cannot use as given, naming the file, line and field and never
quoting the text: a line that is not JSON, not an object, lacks a side, has a side that is not a
non-empty string, or has identical sides (no preference to learn). Each of these reads one line; a
refused file releases nothing (the stage stops before any mechanism), so the guarantee covers the
files it accepts.

``preference_parts`` turns the pairs into the parts, and every step is *1-stable*
(``dpinstruct.privacy``): for any file D and any comparison x, the reward part (the DP mechanism's
input) and the held-out part of D + x differ from those of D by x's own row at most, in one part.
``unique_pairs`` gives the comparisons SET semantics: a line repeating both texts of another is the
same comparison, counted once (its rows are identical, so which copy stays does not matter).
``comparisons`` keeps the pairs that are a comparison of two answers to ONE prompt, and drops
(counting them) the dialogues the source itself garbled: 5 of the shipped 1,900 have contexts that
differ between the sides (a turn marker inside a turn), 3 an empty final answer. Then a pair goes
to the ``reward`` or the ``heldout`` part by a seeded hash of its id alone (``text.splits.partition_of``),
and the id is a hash of its content, so copies never straddle the parts. All rules on one pair.

The reward model sees the last human turn and the final answer (``prompt``, ``chosen``,
``rejected``), the same shape as an RLHF rollout: one instruction, one response.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa

from dpinstruct.io.errors import InputError
from dpinstruct.io.instructions import check_text, json_objects
from dpinstruct.text.splits import partition_of

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
SIDES = ("chosen", "rejected")
SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("prompt", pa.string(), nullable=False),
                    pa.field("chosen", pa.string(), nullable=False), pa.field("rejected", pa.string(), nullable=False),
                    pa.field("partition", pa.string(), nullable=False)])


def _raw(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(path, f"cannot be read{' as gzip' if path.suffix == '.gz' else ''} ({type(e).__name__})") from None


def read_pairs(path: Path | str) -> pd.DataFrame:
    """id, chosen, rejected of every line in file order (blank lines skipped; a repeated comparison
    is kept: ``unique_pairs`` makes it one); raises ``InputError`` on bad input."""
    path = Path(path)
    rows = []
    for line_no, record in json_objects(path, _raw(path)):
        for side in SIDES:
            value = record.get(side)
            if not isinstance(value, str):
                raise InputError(path, "missing" if value is None else f"expected a string, got {type(value).__name__}",
                                 line=line_no, field=side)
            if not value.strip():
                raise InputError(path, "empty text: a comparison needs two answers", line=line_no, field=side)
            check_text(value, f"{path}, line {line_no}", side)
        if record["chosen"] == record["rejected"]:
            raise InputError(path, "identical to 'chosen': the pair states no preference", line=line_no,
                             field="rejected")
        digest = hashlib.sha256(json.dumps([record["chosen"], record["rejected"]]).encode()).hexdigest()[:16]
        rows.append((digest, record["chosen"], record["rejected"]))
    if not rows:
        raise InputError(path, "no comparison in the file")
    return pd.DataFrame(rows, columns=["id", *SIDES])


def unique_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Set semantics on comparisons: the first row of each distinct (chosen, rejected); the copies
    are identical rows (the id is a hash of the two texts), so the choice depends on no other row."""
    return pairs.drop_duplicates(list(SIDES), keep="first").reset_index(drop=True)


def final_turn(dialogue: str) -> tuple[str, str]:
    """(everything before the final assistant turn, that turn's text)."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        return dialogue, ""
    return dialogue[:cut], dialogue[cut + len(ASSISTANT):].strip()


def last_human_turn(context: str) -> str:
    cut = context.rfind(HUMAN)
    return context[cut + len(HUMAN):].strip() if cut >= 0 else ""


def comparisons(pairs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """(id, prompt, chosen, rejected) of the pairs answering one prompt with two non-empty answers,
    and counts of those dropped (``context_differs``, ``empty_answer``)."""
    rows, dropped = [], {"context_differs": 0, "empty_answer": 0}
    for pid, chosen, rejected in pairs.itertuples(index=False):
        (context, a), (other, b) = final_turn(chosen), final_turn(rejected)
        prompt = last_human_turn(context)
        if context != other or not prompt:
            dropped["context_differs"] += 1
        elif not a or not b:
            dropped["empty_answer"] += 1
        else:
            rows.append((pid, prompt, a, b))
    return pd.DataFrame(rows, columns=["id", "prompt", *SIDES]), dropped


def preference_parts(pairs: pd.DataFrame, seed: int, shares: dict[str, float]) -> tuple[pd.DataFrame, dict[str, int]]:
    """(id, prompt, chosen, rejected, partition) of the distinct usable comparisons of ``read_pairs``'s
    rows, in file order, and counts: ``duplicates`` (rows repeating a comparison), the drops of
    ``comparisons``, one count per part. 1-stable (module docstring)."""
    unique = unique_pairs(pairs)
    kept, dropped = comparisons(unique)
    kept["partition"] = [partition_of(i, seed, shares) for i in kept.id]
    return kept, {"duplicates": len(pairs) - len(unique), **dropped,
                  **{name: int((kept.partition == name).sum()) for name in shares}}
