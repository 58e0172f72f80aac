"""Typed params: one pydantic model per params.yaml section, checked when a stage reads it.

A stage reads each section it uses with ``<Model>.from_params(params)`` (or single keys with
``<Model>.read(params, key, ...)``) and then only attributes: a misspelt key, a wrong type, a
non-whole integer, NaN or a missing key stops it before any data is read, with a ``ConfigError``
that names the dotted key, what it must be and the value found. What a stage hashes into its
artifacts and DP run keys stays the section as params.yaml wrote it (``.raw``), so typing changes
no hash. ``base`` holds the value types and the reading rules; the sections are grouped by the
stages that read them (``data``, ``models``, ``privacy``, ``generation``, ``algorithm2``,
``evaluation``, ``alignment``, ``rl``, ``rlhf``), and ``project`` checks a whole file.
"""
