"""Copies of private instructions in synthetic ones: the memorisation gate's statistics.

A synthetic row COPIES a private one when the two are equal after case and whitespace folding
(``filters.dedup_key``), and OVERLAPS one when they share a word n-gram (``filters.ngrams``: casefolded
``\\w+`` words). Rows with fewer than n words can only copy. These counts are functions of the
private rows, so they are private statistics: for the data owner's metrics, never for a release.
"""
from __future__ import annotations

from dpinstruct.text.filters import dedup_key, ngrams


class PrivateIndex:
    """The folded texts and the word n-grams of the private rows, built once."""

    def __init__(self, private: list[str], n: int):
        if n < 1:
            raise ValueError(f"n-gram length must be >= 1, got {n}")
        self.n = n
        self.exact = {dedup_key(t, casefold=True) for t in private}
        self.grams: set[tuple[str, ...]] = set()
        for t in private:
            self.grams |= ngrams(t, n)

    def matches(self, texts: list[str]) -> dict:
        """{"rows", "exact", "ngram" (overlap but no exact copy), "any"} over ``texts``."""
        exact = ngram = 0
        for t in texts:
            if dedup_key(t, casefold=True) in self.exact:
                exact += 1
            elif not ngrams(t, self.n).isdisjoint(self.grams):
                ngram += 1
        return {"rows": len(texts), "exact": exact, "ngram": ngram, "any": exact + ngram}
