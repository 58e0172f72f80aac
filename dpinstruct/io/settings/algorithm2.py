"""Algorithm 2: ``embed`` (sentence embeddings), ``cluster`` (PCA + k-means on the pool) and
``resample`` (the release drawn toward the noisy histogram)."""
from dpinstruct.io.settings.base import BOOL, Float, Int, Section


class Embed(Section):
    KEY = "embed"
    batch_size: Int(ge=1)
    max_seq_length: Int(ge=1)        # tokens seen by the embedder per instruction
    bf16: BOOL


class Cluster(Section):
    KEY = "cluster"
    explained_variance: Float(gt=0, le=1)   # PCA keeps the fewest axes explaining this share
    k: Int(ge=1)
    niter: Int(ge=1)
    nredo: Int(ge=1)
    seed: Int(ge=0)
    max_points_per_centroid: Int(ge=1)


class Resample(Section):
    KEY = "resample"
    target_size: Int(ge=0, null=True) = None   # null: the noisy histogram's total
    max_pool_share: Float(gt=0, le=1)
    seed: Int(ge=0)
