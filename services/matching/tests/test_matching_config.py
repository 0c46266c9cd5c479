"""Scoring weights and the retry batch come from settings, validated at start."""
from __future__ import annotations

import pytest

from matching import bootstrap, domain
from servicekit.settings import Settings


def test_weights_and_retry_batch_are_read_from_the_environment() -> None:
    settings = Settings.from_env("matching", {"MATCHING_WEIGHT_DISTANCE": "0.9",
                                              "MATCHING_WEIGHT_SPREADING": "0",
                                              "MATCHING_RESPONSE_SCALE_H": "12",
                                              "MATCHING_RETRY_BATCH": "7"})
    policy = bootstrap.policy_from(settings)
    assert policy.weights.distance == 0.9 and policy.weights.spreading == 0.0
    assert policy.weights.response_scale_h == 12.0 and policy.retry_batch == 7
    assert policy.weights.headroom == domain.DEFAULT_WEIGHTS.headroom


def test_the_defaults_are_the_documented_weights() -> None:
    assert bootstrap.policy_from(Settings.from_env("matching", {})).weights == (
        domain.DEFAULT_WEIGHTS)


@pytest.mark.parametrize("env", [{"MATCHING_WEIGHT_DISTANCE": "-0.1"},
                                 {"MATCHING_DISTANCE_SCALE_KM": "0"},
                                 {"MATCHING_WEIGHT_LANGUAGE": "lots"}])
def test_bad_weights_stop_the_service_from_starting(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        bootstrap.policy_from(Settings.from_env("matching", env))
