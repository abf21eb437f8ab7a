"""Shared engine fixtures; test modules import them by name."""

from __future__ import annotations

import pytest
from transformers import PreTrainedModel

from pytest_decodeperf import build_model


@pytest.fixture(scope="session")
def tiny_model() -> PreTrainedModel:
    return build_model("tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_gqa() -> PreTrainedModel:
    return build_model("tiny-llama-gqa")
