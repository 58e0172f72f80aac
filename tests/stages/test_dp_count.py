"""`dp_count@<name>` refuses a noise scale that would publish the private size (0) or spend most of
a budget on it (below 1), before it reads anything: a very small sigma also stalls the accountants."""
from __future__ import annotations

import pytest

from dpinstruct.io.errors import ConfigError, PrivacyConfigError
from tests.conftest import run_dp_count

TOO_SMALL = (PrivacyConfigError, r"dp_count\.sigma must be >= 1\.0 in a private run")


@pytest.mark.parametrize("sigma,refusal", [(0.0, TOO_SMALL), (0.01, TOO_SMALL), (0.99, TOO_SMALL),
                                           (float("nan"), (ConfigError, r"dp_count\.sigma: must be a finite number, "
                                                                        r"got nan"))])
def test_a_count_without_enough_noise_is_refused(tmp_path, monkeypatch, repo_params, sigma, refusal):
    monkeypatch.chdir(tmp_path)  # no input here: the refusal comes first
    params = {**repo_params, "dp_count": {"sigma": sigma}}
    with pytest.raises(refusal[0], match=refusal[1]):
        run_dp_count("instructions", params)
    assert not (tmp_path / "metrics").exists()
