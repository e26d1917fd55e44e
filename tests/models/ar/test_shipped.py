"""The shipped transformer (checkpoints/t2v_cpu/): it carries its tokenizers and sampling settings
(jobs.generate needs only --checkpoint, the prompts and --out), refuses a video tokenizer it was not
trained with in one line, and its clips for prompts held out of its training corpus show the
background and the colour the prompts ask for, detected from the pixels."""

import json
from pathlib import Path

import pytest

from jobs import evaluate, generate
from loong_dist.config import load_config
from loong_dist.data.synthetic import held_out_appearances, held_out_prompts
from loong_dist.inference.carried import CarriedError

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "checkpoints" / "t2v_cpu" / "model.safetensors"
RECIPE = ROOT / "configs" / "cpu" / "loong.yaml"


def test_shipped_file_is_small_and_refuses_another_video_tokenizer(tmp_path):
    assert SHIPPED.stat().st_size <= 25 * 2**20
    other = tmp_path / "other.safetensors"
    other.write_bytes((ROOT / "checkpoints" / "tokenizer_cpu" / "tokenizer.safetensors").read_bytes()[:-1] + b" ")
    with pytest.raises(CarriedError, match="not the video tokenizer .* was trained with"):
        generate.main(["--checkpoint", str(SHIPPED), "--prompt", "a red circle", "--tokenizer", str(other),
                       "--out", str(tmp_path / "v.mp4")])


def test_held_out_prompts_get_their_background_and_colour(tmp_path):
    # The card measures background right in 96% and colour in 94% of held-out clips (144 prompts), so a
    # test that asks every clip for both fails for some seeds and bf16 roundings; one that allows one miss
    # in 8 for each passes a model at those rates about nine times in ten, and a model that drew colours
    # at chance (1 in 7) about once in 10^5.
    syn = load_config(RECIPE).synthetic
    prompts = held_out_prompts(8, seed=11, held=held_out_appearances(syn.held_out, syn.split_seed))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    # one window of the model's own length (its carried settings), as one batch
    assert generate.main(["--checkpoint", str(SHIPPED), "--prompts-file", str(tmp_path / "prompts.jsonl"),
                          "--seconds", "2", "--out", str(tmp_path / "gen" / "v.mp4")]) == 0
    assert evaluate.main(["generation", "--videos", str(tmp_path / "gen" / "v.json"),
                          "--out", str(tmp_path / "eval")]) == 0
    videos = json.loads((tmp_path / "eval" / "generation_eval.json").read_text())["per_video"]
    assert [v["prompt"] for v in videos] == [p["prompt"] for p in prompts]
    for attribute in ("background", "colour"):
        misses = [(v["prompt"], v["alignment"][0]["detected"][attribute]) for v in videos
                  if not v["alignment"][0]["match"][attribute]]
        print(attribute, "misses:", misses)
        assert len(misses) <= 1, (attribute, misses)
