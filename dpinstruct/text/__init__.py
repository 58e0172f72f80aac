"""Instruction text: cleaning, filters and dedup, splits, parsing of generated samples, statistics."""
