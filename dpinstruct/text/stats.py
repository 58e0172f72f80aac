"""Surface statistics of an instruction set: length in words and distinct-n.

distinct-n (Li et al. 2016) = unique word n-grams / all word n-grams of the set. It falls as a set
grows, so sets are only compared on samples of the same size (the caller's job). Words are
lower-cased runs of letters/digits, and each punctuation mark is a word of its own.
"""
from __future__ import annotations

import re

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(w[i:i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def length_summary(lengths: np.ndarray) -> dict:
    return {"mean": float(np.mean(lengths)), "median": float(np.median(lengths)),
            "p90": float(np.percentile(lengths, 90)), "max": int(np.max(lengths))}


def length_shares(lengths: np.ndarray, width: int, top: int) -> np.ndarray:
    """Share of rows per bin [0, width), [width, 2 width), ..., with a last bin [top, inf)."""
    edges = np.append(np.arange(0, top + 1, width), np.inf)
    counts, _ = np.histogram(lengths, bins=edges)
    return counts / counts.sum()
