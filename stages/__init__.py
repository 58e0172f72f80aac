"""DVC stages of the DP synthetic-instruction pipeline (Yu, Kairouz, Oh, Xu, ICML 2024).

One module per stage, each with a ``main()`` run by dvc.yaml as ``python -m stages.<name>``,
plus a few shared modules (params, artifacts, quality checks, model loading).
"""
