"""Config: YAML `base:` chains, dot-list overrides, strict keys/types/values, dump round trip."""

import subprocess
import sys
from pathlib import Path

import pytest

from loong_dist.config import DEFAULT_CONFIG, Config, defaults_yaml, load_config, save_config
from loong_dist.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_base_yaml_is_the_dataclass_defaults():
    # configs/base.yaml is generated from the dataclasses; it must not drift from them.
    assert DEFAULT_CONFIG.read_text() == defaults_yaml(), "regenerate: python -m loong_dist.config > configs/base.yaml"
    assert load_config(DEFAULT_CONFIG) == Config()


def test_base_chain_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text(f"base: {DEFAULT_CONFIG}\ndata:\n  fps: 4\n  size: 64\nrun:\n  seed: 3\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\ndata:\n  size: 96\n")
    cfg = load_config(tmp_path / "sub" / "b.yaml",
                      ["run.seed=7", "data.frames=[1,5]", "storage.endpoint_url=http://x:1"])
    assert cfg.data.fps == 4.0 and isinstance(cfg.data.fps, float)  # from a.yaml, int coerced to float
    assert cfg.data.size == 96                                        # b.yaml wins over a.yaml
    assert cfg.run.seed == 7                                          # command line wins over files
    assert cfg.data.frames == [1, 5]
    assert cfg.storage.endpoint_url == "http://x:1"
    assert cfg.text == Config().text                                  # untouched sections keep defaults


def test_exponent_without_dot_is_a_number():
    assert load_config(None, ["optim.lr=3e-4"]).optim.lr == 3e-4


def test_comma_list_from_flag():
    assert load_config(None, ["data.frames=1,17"]).data.frames == [1, 17]
    assert load_config(None, ["data.frames=17"]).data.frames == [17]


@pytest.mark.parametrize("override, message", [
    (["modle.n_layers=4"], "unknown config key 'modle' (did you mean 'model'?)"),
    (["model.size=huge"], "model.size='huge': must be one of tiny, small, 125m, 1b, 7b"),
    (["model.n_heads=3"], "model.n_heads=3: must divide model.dim=64"),
    (["model.attention=flash"], "model.attention='flash': must be one of sdpa, blocked"),
    (["model.attention_block=0"], "model.attention_block=0: must be >= 1"),
    (["data.fpss=4"], "unknown config key 'data.fpss' (did you mean 'data.fps'?)"),
    (["data.size=big"], "data.size='big': expected an integer"),
    (["data.size=100"], "data.size=100: must be a multiple of 8"),
    (["data.frames=[1,16]"], "16 is not 1 + 4k"),
    (["data.fps=true"], "data.fps=True: expected a number"),
    (["storage.retry_mode=fast"], "storage.retry_mode='fast': must be one of 'legacy', 'standard', 'adaptive'"),
    (["storage.endpoint_url=localhost:9000"], "must start with http:// or https://"),
    (["run.seed"], "'run.seed' is not of the form section.key=value"),
    (["tokenizer_train.manifests=[a,b]", "tokenizer_train.manifest_shares=[1]"],
     "tokenizer_train.manifest_shares=[1.0]: needs one share >= 0 per manifest, not all 0"),
    (["tokenizer_train.crop=60"], "tokenizer_train.crop=60: must be 0 (whole frame) or a positive multiple of 8"),
])
def test_bad_overrides_name_key_and_value(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULT_CONFIG, override)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(bad_key)
    nested = tmp_path / "nested.yaml"
    nested.write_text("data:\n  sizee: 64\n")
    message = r"nested.yaml: unknown config key 'data.sizee' \(did you mean 'data.size'\?\)"
    with pytest.raises(ConfigError, match=message):
        load_config(nested)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(loop)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml:.*not valid YAML"):
        load_config(broken)


def test_dump_round_trip(tmp_path):
    cfg = load_config(DEFAULT_CONFIG, ["data.size=64", "run.out_dir=somewhere", "text.vocab_size=1000"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg


def test_job_exits_with_one_line_before_work(tmp_path):
    # A job given a wrong key stops with exit code 2 and one line naming it, and writes nothing.
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "data_prep.text_tokenizer", "--manifest", "m.jsonl",
                           "--out", str(out / "t.model"), "text.vocab_sise=100"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: command line: unknown config key 'text.vocab_sise' (did you mean 'text.vocab_size'?)"]
    assert not out.exists()


def test_jobs_take_key_value_items_between_their_flags(tmp_path):
    """argparse's plain parse stops at the first positional run: `--out X a=1 --steps 2 b=2` was
    'unrecognized arguments' for jobs.train. Every job parses intermixed."""
    import jobs.train
    import data_prep.synthetic
    with pytest.raises(ConfigError, match="train.shards is empty"):  # parsed: the check after it speaks
        jobs.train.main(["--out", str(tmp_path / "r"), "optim.lr=1e-3", "--steps", "2", "model.size=tiny"])
    assert data_prep.synthetic.main(["--out", str(tmp_path / "p"), "synthetic.held_out=0.2", "--prompts", "3",
                                     "run.seed=4"]) == 0
    assert len((tmp_path / "p" / "prompts.jsonl").read_text().splitlines()) == 3


def test_cpu_recipe_runs_every_job_with_its_variant_overrides(tmp_path):
    """configs/cpu/recipe.sh with RECIPE_SET: each of its jobs gets the overrides (a variant of the
    recipe), and each job's key=value items load as this project's config."""
    import json
    import os

    log = tmp_path / "calls.jsonl"
    stub = tmp_path / "python"  # stands in for the interpreter: records each job's command line
    record = f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\n{record}\n")
    stub.chmod(0o755)
    variant = ["synthetic.start_inside=true", "model.code_level_embeddings=true"]
    env = dict(os.environ, PYTHON=str(stub), RECIPE_SET=" ".join(variant))
    recipe = [str(ROOT / "configs/cpu/recipe.sh"), str(tmp_path / "run")]
    subprocess.run(recipe, env=env, check=True, capture_output=True)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    jobs = [call[1] for call in calls]
    assert jobs == (["data_prep.synthetic"] * 3 + ["data_prep.text_tokenizer"] + ["data_prep.pretokenize"] * 3
                    + ["jobs.train"] * 6)
    for call in calls:  # (the recipe runs from the repository's root)
        assert call[-2:] == variant, call
        load_config(str(ROOT / call[call.index("--config") + 1]), [a for a in call if "=" in a and a[0] != "-"])
    assert sorted(p.name for p in (tmp_path / "run").glob("*.done")) == [
        "data.done", "shards.done", "stage1.done", "stage2.done", "stage3.done", "stage3_more.done",
        "stage3_noise.done", "stage3_noise_more.done"]
