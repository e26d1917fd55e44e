"""Shared inputs of the reliability tests: a tiny video tokenizer, a text tokenizer, synthetic clips,
and token shards written by the project's own writer."""

import pytest

from tests.fixtures.fault_proxy import fault_proxy  # noqa: F401
from tests.fixtures.pretok import make_pretok_assets


@pytest.fixture(scope="session")
def pretok_assets(tmp_path_factory):
    """tok.safetensors (tiny random tokenizer), text.model, and syn/: 24 synthetic 17-frame 32x32
    clips with manifest.jsonl."""
    return make_pretok_assets(tmp_path_factory.mktemp("reliability-assets"), clips=24)
