"""Sentence embeddings: tables and encoding, bucketing (PCA + k-means), Algorithm 2's resampling, MAUVE."""
