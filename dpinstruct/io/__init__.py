"""Artifacts and the stage frame: Parquet with lineage metadata, instruction readers, quality checks,
params, errors, the stage runner, resumable chunks and checkpoints. Imports no other subpackage."""
