"""Shared inputs of the reliability tests: a tiny video tokenizer, a text tokenizer, synthetic clips,
and token shards written by the project's own writer."""

import pytest
import torch

import data_prep.synthetic as synthetic
from loong_dist.config import TokenizerConfig
from loong_dist.data.manifest import read_manifest
from loong_dist.data.text_tokenizer import TextTokenizer, train_text_tokenizer
from loong_dist.models.tokenizer import VideoTokenizer, save_tokenizer
from tests.fixtures.fault_proxy import fault_proxy  # noqa: F401


@pytest.fixture(scope="session")
def pretok_assets(tmp_path_factory):
    """tok.safetensors (tiny random tokenizer), text.model, and syn/: 24 synthetic 17-frame 32x32
    clips with manifest.jsonl."""
    root = tmp_path_factory.mktemp("reliability-assets")
    torch.manual_seed(0)
    save_tokenizer(VideoTokenizer(TokenizerConfig(channels=8, num_res_blocks=0, decoder_res_blocks=0)),
                   root / "tok.safetensors")
    assert synthetic.main(["--out", str(root / "syn"), "--n", "24", "--frames", "17", "--size", "32",
                           "synthetic.held_out=0"]) == 0
    entries, _ = read_manifest(str(root / "syn" / "manifest.jsonl"))
    TextTokenizer(train_text_tokenizer([e.caption for e in entries], 300)).save(str(root / "text.model"))
    return root
