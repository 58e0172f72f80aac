"""dpinstruct: differentially private synthetic instructions (Yu, Kairouz, Oh, Xu, ICML 2024) as a DVC pipeline.

The library behind the DVC stages in ``stages/`` and the ``dpinstruct`` command, by concern:

* ``privacy``    accounting and calibration, the ledger, DP randomness, DP-Adam, the DP histogram,
                 the lineage audit and the release bundle;
* ``text``       cleaning, filters and dedup, train/val/test splits, generation parsing, statistics;
* ``models``     loading (packaged, Hugging Face id or local folder), LoRA adapters, the fast samplers;
* ``alignment``  annotation backends (local, OpenAI-compatible), SFT, response NLL, pairwise judges;
* ``rl``         DP alignment with RL (Wu et al.): IMDb data and partitions, the sentiment reward, DP-PPO;
* ``embeddings`` embedding tables and encoding, bucketing (PCA + k-means), Algorithm 2's resampling, MAUVE;
* ``io``         Parquet artifacts with metadata, instruction readers, quality checks, params, errors,
                 the stage runner, chunk store and checkpoints;
* ``sweep``, ``cli``  the epsilon sweep and the command line.

Nothing here imports ``stages``; ``io`` imports no other subpackage, and ``privacy`` needs only ``io``.
"""
