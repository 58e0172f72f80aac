"""Project tooling around the pipeline, none of it a DP mechanism of its own: the lineage check and
report (``lineage``), the release bundle (``bundle``), epsilon sweeps (``sweep``), public-proxy
tuning (``tuning``), the canary audit (``canary_audit``) and the layout rules (``layout``). These may
import DVC and networkx; ``dpinstruct.privacy`` never does."""
