"""DVC stage entry points of the DP synthetic-instruction pipeline (Yu, Kairouz, Oh, Xu, ICML 2024).

Only stages live here: one module per stage in dvc.yaml, named after it, each with a ``main()``
that dvc.yaml runs as ``python -m stages.<name>``: read its params, call the ``dpinstruct``
library, write its outputs. Reusable code belongs in ``dpinstruct`` (``dpinstruct/tools/layout.py``
states the rules and the tests keep them).
"""
