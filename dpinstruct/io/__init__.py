"""Artifacts and the stage frame: Parquet with lineage metadata, instruction readers, quality checks,
params (read typed, one model per section: ``settings``; hashed as written: ``params``), errors, the
stage runner, resumable chunks and checkpoints. Imports no other subpackage."""
