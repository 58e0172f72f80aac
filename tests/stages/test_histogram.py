"""The DP histogram: sensitivity 1 under add/remove-one, the stated noise scale, its ledger entry,
refusals, the non-private mode, and that only pool embeddings are ever used for fitting."""
from __future__ import annotations

import json
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from dp_accounting.pld import pld_privacy_accountant

from dpinstruct.embeddings import bucketing, embedding_io
from dpinstruct.io.artifacts import Outputs, read_metadata, table_metadata, write_parquet
from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.privacy import histogram as mechanism
from stages import cluster, histogram
from tests.conftest import run_dp_count
from tests.spies import record_reads, unbound_reads

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"privacy": {"epsilon": 6.0, "delta": 1e-5, "secure_mode": False}, "histogram": {"sigma": 10.0},
          "dp_count": {"sigma": 20.0}, "user_level": {"enabled": False, "max_records_per_user": 8},
          "cluster": {"explained_variance": 0.9, "k": 8, "niter": 20, "nredo": 1, "seed": 0,
                      "max_points_per_centroid": 256}}


def vectors(n, seed, d=24):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(8, d)) * 3
    return (centres[rng.integers(8, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def write_embeddings(path, n, seed, privacy):
    table = embedding_io.to_table([f"{path}-{i}" for i in range(n)], vectors(n, seed))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_parquet(table, path, table.schema, table_metadata("test", "x", privacy))


@pytest.fixture
def fitted(tmp_path, monkeypatch):
    """A project with pool embeddings only, clustered by the real stage."""
    monkeypatch.chdir(tmp_path)
    write_embeddings(cluster.POOL_EMBEDDINGS, 400, 0, "dp")
    with Outputs() as out:
        cluster.cluster(PARAMS, out)
    return tmp_path


def exact(private):
    b = buckets()
    return mechanism.exact_counts(b.assign(private), len(b.centroids))


def buckets():
    return bucketing.from_table(histogram.read_table(histogram.BUCKETS), read_metadata(histogram.BUCKETS)["buckets"])


def test_one_record_changes_exactly_one_count_by_one(fitted):
    b, private = buckets(), vectors(300, 1)
    full = mechanism.exact_counts(b.assign(private), len(b.centroids))
    for i in (0, 17, 299):
        diff = full - mechanism.exact_counts(b.assign(np.delete(private, i, axis=0)), len(b.centroids))
        assert np.count_nonzero(diff) == 1 and diff.sum() == 1 and diff.max() == 1
    assert full.sum() == 300 and len(full) == 8


def write_train(n, users=None):
    """The train split's ids (as write_embeddings names them) and, for user-level DP, their users."""
    Path(histogram.TRAIN).parent.mkdir(parents=True, exist_ok=True)
    ids = [f"{histogram.TRAIN_EMBEDDINGS}-{i}" for i in range(n)]
    table = pa.table({"id": ids, "instruction": ["x"] * n, "user_id": pa.array(users or [None] * n, pa.string())})
    write_parquet(table, histogram.TRAIN, table.schema, table_metadata("test", "x", "private"))


def run_histogram(params, users=None):
    """The train split's embeddings and users, their DP count (dp_count@instructions, which the
    stage reads), then the stage."""
    write_embeddings(histogram.TRAIN_EMBEDDINGS, 300, 1, "private")
    write_train(300, users)
    if users is not None:  # user-level DP is a param: the users' ids alone switch nothing
        params = {**params, "user_level": {**params["user_level"], "enabled": True}}
    run_dp_count("instructions", params)
    with Outputs() as out:
        return histogram.histogram(params, out)


def test_every_file_the_stage_reads_is_bound_into_its_noise(fitted):
    run_histogram(PARAMS)  # its inputs and their DP count; then the stage alone, recorded
    with record_reads() as seen, Outputs() as out:
        histogram.histogram(PARAMS, out)
    read = {str(Path(p).relative_to(fitted)) for p in seen["read"] if p.startswith(str(fitted))}
    assert {"data/embeddings/train.parquet", "data/clusters/buckets.parquet"} <= read
    assert not unbound_reads(seen, fitted)


def test_stage_releases_only_the_noisy_histogram_and_its_ledger_entry(fitted):
    entry = run_histogram(PARAMS)
    noisy = pd.read_parquet(histogram.NOISY)
    counts = exact(vectors(300, 1))
    assert not np.allclose(noisy.noisy_count, counts)
    assert not np.allclose(noisy.noisy_count % 1, 0)  # noise is not whole numbers ...
    seeded = np.clip(counts + np.random.default_rng(0).normal(0, 10.0, 8), 0, None)
    assert not np.allclose(noisy.noisy_count, seeded)  # ... nor a public seed's draws
    assert read_metadata(histogram.NOISY)["privacy"] == "dp"
    saved = json.loads(Path("metrics/privacy/histogram.json").read_text())
    assert saved == json.loads(json.dumps(entry))
    assert (saved["mechanism"], saved["sampling_rate"], saved["steps"], saved["sensitivity"]) == ("gaussian", 1.0, 1, 1.0)
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.GaussianDpEvent(10.0))
    independent = acc.get_epsilon(1e-5)
    assert independent <= saved["epsilon"] <= independent + 1e-9  # rounded up at 1e-9, never down
    metrics = json.loads(Path(histogram.METRICS).read_text())
    assert metrics["noisy_total"] == pytest.approx(noisy.noisy_count.sum()) and "n_records" not in saved


def test_non_private_mode_releases_exact_counts(fitted):
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    params["privacy"]["epsilon"] = math.inf
    entry = run_histogram(params)
    assert np.array_equal(pd.read_parquet(histogram.NOISY).noisy_count, exact(vectors(300, 1)))
    assert entry["private"] is False and entry["epsilon"] == "inf"


def histogram_bytes():
    return Path(histogram.NOISY).read_bytes(), Path("metrics/privacy/histogram.json").read_text()


def test_the_key_replays_the_noise_and_another_key_or_secure_mode_does_not(fitted, monkeypatch, tmp_path_factory):
    run_histogram(PARAMS)
    first = histogram_bytes()
    run_histogram(PARAMS)
    assert histogram_bytes() == first  # the key's holder reproduces the release bit for bit
    monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(tmp_path_factory.mktemp("key") / "other.key"))
    run_histogram(PARAMS)
    assert histogram_bytes()[0] != first[0]
    secure = yaml.safe_load(yaml.safe_dump(PARAMS))
    secure["privacy"]["secure_mode"] = True
    run_histogram(secure)
    one = histogram_bytes()[0]
    run_histogram(secure)
    assert histogram_bytes()[0] != one  # identical params, fresh noise
    assert json.loads(Path("metrics/privacy/histogram.json").read_text())["secure_mode"] is True


def test_the_key_is_in_no_output(fitted, monkeypatch, tmp_path_factory):
    import base64

    key_path = tmp_path_factory.mktemp("key") / "leak-test.key"
    monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(key_path))
    run_histogram(PARAMS)
    key = key_path.read_bytes()
    needles = [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)]
    for f in (p for p in Path(".").rglob("*") if p.is_file()):
        blob = f.read_bytes()
        assert not any(n in blob for n in needles), f


@pytest.mark.parametrize("change,match", [({"histogram": {"sigma": 0.0}}, "sigma must be > 0"),
                                          ({"privacy": {"epsilon": 6.0, "delta": 0.01}},
                                           r"delta=0.01 must be in \(0, 1/N\) .* for the DP count N~=")])
def test_unsafe_settings_are_refused_before_counting(fitted, change, match):
    with pytest.raises(PrivacyConfigError, match=match):
        run_histogram({**PARAMS, **change})
    assert not histogram.NOISY.exists() and not Path("metrics/privacy/histogram.json").exists()


def test_the_delta_check_uses_the_dp_count_not_n(fitted):
    # delta 1/250 is refused for N~ > 250 and accepted for N~ < 250 with the same 300 records: the
    # decision reads the published DP count, never the exact N
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    params["privacy"]["delta"] = 1 / 250
    write_embeddings(histogram.TRAIN_EMBEDDINGS, 300, 1, "private")
    write_train(300)
    entry = run_dp_count("instructions", params)  # the real entry; then N~ on either side of 250 by hand
    count = Path("metrics/privacy/dp_count@instructions.json")
    for noisy, refused in ((320.0, True), (200.0, False)):
        count.write_text(json.dumps({**entry, "noisy_count": noisy}))
        if refused:
            with pytest.raises(PrivacyConfigError, match=r"N~=320\.0"), Outputs() as out:
                histogram.histogram(params, out)
        else:
            with Outputs() as out:
                assert histogram.histogram(params, out)["delta"] == 1 / 250


def test_the_noise_follows_the_dp_count_entry(fitted):
    # the count entry is an input of the stage: another N~ (same records, same key) draws other noise
    run_histogram(PARAMS)
    first = histogram_bytes()[0]
    count = Path("metrics/privacy/dp_count@instructions.json")
    entry = json.loads(count.read_text())
    count.write_text(json.dumps({**entry, "noisy_count": entry["noisy_count"] + 1.0}))
    with Outputs() as out:
        histogram.histogram(PARAMS, out)
    assert histogram_bytes()[0] != first


def test_a_missing_dp_count_is_refused_and_nothing_written(fitted):
    write_embeddings(histogram.TRAIN_EMBEDDINGS, 300, 1, "private")
    write_train(300)
    with pytest.raises(FileNotFoundError, match=r"dp_count@instructions.json: the DP count of instructions is "
                                                r"missing \(dvc repro dp_count@instructions\)"), Outputs() as out:
        histogram.histogram(PARAMS, out)
    assert not histogram.NOISY.exists()


def test_pca_and_kmeans_never_see_private_embeddings(tmp_path, monkeypatch):
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["cluster"]["deps"]
    assert [d for d in deps if d.startswith("data/")] == ["data/embeddings/pool.parquet"]
    monkeypatch.chdir(tmp_path)
    write_embeddings(cluster.POOL_EMBEDDINGS, 400, 0, "dp")
    seen, real = [], bucketing.fit
    monkeypatch.setattr(bucketing, "fit", lambda x, **kw: (seen.append(x.copy()), real(x, **kw))[1])
    with Outputs() as out:
        cluster.cluster(PARAMS, out)
    assert len(seen) == 1 and np.array_equal(seen[0], embedding_io.read(cluster.POOL_EMBEDDINGS)[1])
    assert sorted(p.name for p in Path("data/embeddings").iterdir()) == ["pool.parquet"]  # nothing private to read


def test_user_level_histogram_gives_each_user_one_vote_and_says_so(fitted):
    users = [f"u{i % 60}" for i in range(300)]  # 60 users of 5 records
    entry = run_histogram(PARAMS, users)
    assert entry["neighbouring"] == "add_or_remove_one_user" and entry["sensitivity"] == 1.0
    non_private = yaml.safe_load(yaml.safe_dump(PARAMS))
    non_private["privacy"]["epsilon"] = math.inf
    run_histogram(non_private, users)
    shares = pd.read_parquet(histogram.NOISY).noisy_count
    assert shares.sum() == pytest.approx(60)  # one vote per user, not one per record
    assert not np.allclose(shares, exact(vectors(300, 1)))
    # the users' votes bind the noise: the same embeddings with other users draw other noise
    run_histogram(PARAMS, users)
    first = histogram_bytes()[0]
    run_histogram(PARAMS, [f"u{i % 30}" for i in range(300)])
    assert histogram_bytes()[0] != first


def test_user_level_delta_is_checked_against_the_number_of_users(fitted):
    # the unit is the user, so delta must be below 1/(users) by the DP count of the users: 0.01 is
    # too large for 300 records but fine for 60 users, and too large again for 150 users
    loose = yaml.safe_load(yaml.safe_dump(PARAMS))
    loose["privacy"]["delta"] = 0.01
    loose["dp_count"]["sigma"] = 5.0  # N~ within 4 sds of N: 1/N~ vs 0.01 is decided by N alone here
    with pytest.raises(PrivacyConfigError, match="delta"):
        run_histogram(loose)
    assert run_histogram(loose, [f"u{i % 60}" for i in range(300)])["delta"] == 0.01
    with pytest.raises(PrivacyConfigError, match="delta"):
        run_histogram(loose, [f"u{i % 150}" for i in range(300)])
