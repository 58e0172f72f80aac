"""Instruction cleaning shared by `prepare` (and later by `generate`): whitespace normalisation,
exact dedup and the paper's n-gram dedup.

Dedup keeps the FIRST occurrence in input order, so the result does not depend on anything but
the file. n-gram dedup (Yu et al. 2024 dedup with 10-grams): an instruction is dropped when any
of its word n-grams already occurs in a kept instruction; instructions with fewer than n words
are only deduplicated exactly. Seen texts and n-grams are kept as 64-bit BLAKE2b digests, not as
strings and tuples (a million-row file would otherwise hold GBs of them): a false match needs a
digest collision, probability about G^2 / 2^65 for G distinct n-grams (3e-7 at five million), and
would repeat identically on every run.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newline
_BLANK_LINES = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")


def normalise(text: str | None) -> str:
    """NFC, unify newlines, collapse runs of spaces/tabs, trim lines, at most one blank line.
    Newlines survive: code and lists in instructions depend on them."""
    if not text:
        return ""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def dedup_key(text: str, casefold: bool) -> str:
    return " ".join(text.casefold().split()) if casefold else text


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.casefold())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def dedup(texts: list[str], *, casefold: bool, ngram_n: int) -> list[str | None]:
    """For each text, None when kept, else the reason it is a duplicate ("exact" / "ngram")."""
    seen_exact: set[int] = set()
    seen_grams: set[int] = set()
    reasons: list[str | None] = []
    for text in texts:
        key = _digest(dedup_key(text, casefold))
        if key in seen_exact:
            reasons.append("exact")
            continue
        grams = {_digest("\x1f".join(g)) for g in ngrams(text, ngram_n)} if ngram_n > 0 else set()
        if grams & seen_grams:
            reasons.append("ngram")
            continue
        seen_exact.add(key)
        seen_grams |= grams
        reasons.append(None)
    return reasons
