"""jobs.evaluate compare: the same prompts under several settings side by side, rates counted by
hand here; runs on other prompts or clips refused; and the comparisons beside the shipped model
shown in the demo report."""

import json
import re

import pytest

from jobs import evaluate
from loong_dist.data.synthetic import CHECKED
from loong_dist.errors import UserError
from loong_dist.evaluation.comparison import compare, plot_comparison
from loong_dist.evaluation.report import write_report

PROMPTS = ["a small red circle", "a large blue square", "a small green star", "a large white triangle"]


def _generation_eval(matches: list[list[set[str]]], prompts=PROMPTS) -> dict:
    """A jobs.evaluate generation report: matches[v][w] = the attributes video v matches in window w."""
    per_video = []
    for prompt, windows in zip(prompts, matches):
        per_video.append({
            "prompt": prompt,
            "drift": [{"start_s": 10.0 * w, "end_s": 10.0 * (w + 1), "colour_tv": 0.1 * w, "motion": 1.0}
                      for w in range(len(windows))],
            "alignment": [{"start_s": 10.0 * w, "end_s": 10.0 * (w + 1), "detected": {},
                           "match": {a: a in ok for a in CHECKED}} for w, ok in enumerate(windows)]})
    return {"videos_json": "v.json", "generate": {"top_k": 100}, "per_video": per_video}


EVERY = set(CHECKED)
# run a: video 0 all six in both windows; video 1 loses the shape in window 1; videos 2-3 colour only
RUN_A = _generation_eval([[EVERY, EVERY], [EVERY, EVERY - {"shape"}], [{"colour"}, {"colour"}], [{"colour"}, set()]])
# run b: nothing but the background, anywhere
RUN_B = _generation_eval([[{"background"}, {"background"}]] * 4)


def test_match_rates_per_window_counted_by_hand():
    c = compare({"a": RUN_A, "b": RUN_B}, title="t", verdict="a wins")
    a0, a1 = c["generation"]["a"]["per_window"]
    assert (a0["colour"], a0["shape"], a0["all"], a0["videos"]) == (1.0, 0.5, 0.5, 4)
    assert (a1["colour"], a1["shape"], a1["all"], a1["background"]) == (0.75, 0.25, 0.25, 0.5)
    b0 = c["generation"]["b"]["per_window"][0]
    assert (b0["background"], b0["colour"], b0["all"]) == (1.0, 0.0, 0.0)
    assert c["generation"]["a"]["drift"][1]["colour_tv"] == pytest.approx(0.1)
    assert list(c["generation"]) == ["a", "b"] and c["verdict"] == "a wins"
    assert c["attributes"] == [*CHECKED, "all"]


def test_first_n_videos_only():
    c = compare({"a": RUN_A, "b": RUN_B}, first=2)
    a0, a1 = c["generation"]["a"]["per_window"]
    assert (a0["videos"], a0["all"], a1["all"], a1["shape"]) == (2, 1.0, 0.5, 0.5)


def test_runs_on_other_prompts_are_refused():
    other = _generation_eval([[EVERY]] * 4, prompts=PROMPTS[:3] + ["a large yellow star"])
    with pytest.raises(UserError, match=r"run 'other' was evaluated on other prompts than 'a'.*from #3"):
        compare({"a": RUN_A, "other": other})
    compare({"a": RUN_A, "other": other}, first=3)  # the first three are the same prompts


def _frames_eval(still: list[float], moving: list[float], gain: float, clips=("c0.mp4", "c1.mp4")) -> dict:
    return {"checkpoint": "m.safetensors", "clips": len(clips), "copy_gain": gain,
            "frames": [{"latent_frame": i, "still_object": {"loss": s, "tokens": 10},
                        "moving_object": {"loss": m, "tokens": 10 if i else 0}} for i, (s, m) in
                       enumerate(zip(still, moving))],
            "per_clip": [{"video": v} for v in clips]}


def test_frame_losses_and_copy_gain(tmp_path):
    c = compare({}, frames={"groups": _frames_eval([4.0, 3.9], [4.0, 5.8], 0.1),
                            "mean": _frames_eval([4.0, 3.7], [4.0, 5.4], 0.3)})
    assert c["frames"]["mean"]["still_object"] == [4.0, 3.7]
    assert c["frames"]["groups"]["moving_object"] == [None, 5.8]  # a frame with no such token has no loss
    assert c["frames"]["mean"]["copy_gain"] == 0.3
    with pytest.raises(UserError, match="other clips"):
        compare({}, frames={"groups": _frames_eval([4.0], [4.0], 0.1),
                            "mean": _frames_eval([4.0], [4.0], 0.1, clips=("c0.mp4", "c9.mp4"))})
    assert plot_comparison(c, tmp_path / "f.png").stat().st_size > 0


def test_compare_job_writes_json_and_plot(tmp_path):
    for name, report in (("a", RUN_A), ("b", RUN_B)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    out = tmp_path / "cmp"
    assert evaluate.main(["compare", "--out", str(out), "--run", f"top-k 100={tmp_path / 'a.json'}",
                          "--run", f"top-k off={tmp_path / 'b.json'}", "--first", "4", "--title", "top-k"]) == 0
    saved = json.loads((out / "comparison.json").read_text())
    assert list(saved["generation"]) == ["top-k 100", "top-k off"] and saved["first"] == 4
    assert (out / "comparison.png").stat().st_size > 0
    with pytest.raises(Exception, match="expected LABEL=PATH"):
        evaluate.main(["compare", "--out", str(out), "--run", str(tmp_path / "a.json")])
    with pytest.raises(UserError, match="missing.json"):
        evaluate.main(["compare", "--out", str(out), "--run", f"x={tmp_path / 'missing.json'}"])


def test_demo_report_shows_the_shipped_models_claims(tmp_path):
    shipped = tmp_path / "checkpoints" / "t2v"
    claim = shipped / "claims" / "sampling"
    claim.mkdir(parents=True)
    comparison = compare({"top-k 100": RUN_A, "top-k off": RUN_B}, title="Top-k and guidance",
                         verdict="Top-k held: colour 100% against 0%.")
    (claim / "comparison.json").write_text(json.dumps(comparison))
    plot_comparison(comparison, claim / "comparison.png")
    root = tmp_path / "run"
    (root / "generate_shipped").mkdir(parents=True)
    (root / "generate_shipped" / "videos.json").write_text(json.dumps({
        "checkpoint": str(shipped / "model.safetensors"), "fps": 8.0, "size": 128, "wall_s": 1.0,
        "generate": {"seconds": 10, "top_k": 100, "temperature": 1.0, "cfg_scale": 1.0, "reencode": True,
                     "window_latent_frames": 5}, "videos": []}))
    page, summary = write_report(root, "demo")
    text = page.read_text()
    assert "<h2>Loong's claims, measured on the shipped transformer" in text
    assert "Top-k held: colour 100% against 0%." in text
    assert "<td class=\"l\">top-k off</td><td>10</td><td>4</td>" in text  # its second window's row
    assert summary["claims"]["sampling"]["title"] == "Top-k and guidance"
    for ref in re.findall(r'src="([^"]+)"', text):  # copied into the run folder: the page opens from disk
        assert not ref.startswith(("/", "..")) and (root / ref).is_file(), ref
    assert (root / "report_assets" / "claim_sampling.png").is_file()
