"""Evaluation of instruction sets and generators: utility measures and their intervals."""
