"""report.html and summary.json for a pipeline run folder (what `jobs.quickstart` writes).

The page opens from disk with no server and no network: styles are inline, pictures and videos
are files in the run folder referred to by relative paths, curves are PNGs drawn here with
matplotlib. Every section is built from the files the steps left (their `.done` records, configs,
metrics.jsonl, *_eval.json, the generate JSON); a step that did not run leaves its section out,
so the same code reports a full demo, a partial one, or a cluster run folder.

    html, summary = write_report(Path("runs/demo"))
"""

from __future__ import annotations

import html
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from loong_dist.evaluation.plots import line_chart

ASSETS = "report_assets"
"""Sub-folder of the run folder for the PNGs the report draws."""

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f4f4f4; }
td.l, th.l { text-align: left; } .muted { color: #777; } figure { display: inline-block; margin: 0.4em; }
figcaption { font-size: 0.8em; color: #555; max-width: 520px; } pre { background: #f7f7f7; padding: 0.6em;
overflow-x: auto; font-size: 0.8em; } img.strip { max-width: 100%; }
"""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut short by a kill: the rest of the file still counts
            continue
    return out


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    def cell(v: Any, tag: str, i: int) -> str:
        if isinstance(v, float):
            v = f"{v:.4g}"
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{html.escape(str(v))}</{tag}>"
    head = "".join(cell(h, "th", i) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(v, "td", i) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _rel(path: str | Path, root: Path) -> str:
    return html.escape(os.path.relpath(Path(path).resolve(), root.resolve()))


def _img(path: Path, root: Path, caption: str = "", cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return (f'<figure><img src="{_rel(path, root)}"{c} alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


# -- sections ------------------------------------------------------------------------------------

def _throughput(root: Path, name: str, rec: dict) -> str:
    """What a step got through per second of its wall time, from the files it wrote."""
    wall = rec.get("wall_s") or 0
    if not wall:
        return ""
    module, folder = rec.get("module", ""), root / name
    if module == "jobs.train":
        rows = _rows(folder / "metrics.jsonl")
        seconds = sum(r.get("seconds", 0.0) for r in rows)
        return f"{sum(r.get('tokens', 0) for r in rows) / seconds:,.0f} tokens/s in steps" if seconds else ""
    if module == "data_prep.pretokenize":
        totals = (_read_json(folder / "index.json") or {}).get("totals", {})
        return f"{totals.get('samples', 0) / wall:.2f} samples/s" if totals else ""
    if module == "data_prep.synthetic":
        lines = (folder / "manifest.jsonl").read_text().splitlines() if (folder / "manifest.jsonl").exists() else []
        return f"{len(lines) / wall:.1f} clips/s"
    if module == "jobs.generate":
        gen = _read_json(folder / "videos.json") or {}
        video_s = sum(v.get("seconds", 0) for v in gen.get("videos", []))
        return f"{video_s / wall:.3f} s of video per s" if video_s else ""
    if module == "jobs.evaluate" and (folder / "tokenizer_eval.json").exists():
        return f"{(_read_json(folder / 'tokenizer_eval.json') or {}).get('clips', 0) / wall:.2f} clips/s"
    return ""


def steps_section(root: Path, summary: dict) -> str:
    rows = []
    for name, rec in summary["steps"].items():
        rec["throughput"] = _throughput(root, name, rec)
        rows.append([name, rec.get("module", ""), rec.get("wall_s"), rec["throughput"]])
    total = sum(r.get("wall_s") or 0 for r in summary["steps"].values())
    summary["total_wall_s"] = round(total, 1)
    return (f"<h2>Steps</h2><p>{len(rows)} steps, {total / 60:.1f} min in all.</p>" +
            _table(["step", "job", "wall (s)", "throughput"], rows, left=2))


def tokenizer_section(root: Path, summary: dict) -> str:
    report = _read_json(root / "tokenizer_eval" / "tokenizer_eval.json")
    if report is None:
        return ""
    summary["tokenizer"] = {k: report[k] for k in ("checkpoint", "clips", "frames", "size", "psnr", "ssim", "ref_psnr",
                                                  "ref_ssim", "used", "perplexity") if k in report}
    out = ["<h2>Video tokenizer</h2>",
           f"<p>{report['clips']} held-out clips of {report['frames']} frames at {report['size']} px, checkpoint "
           f"<code>{html.escape(str(report['checkpoint']))}</code>. Reference: every frame downsampled 8x "
           f"(bilinear, antialiased) and upsampled back, a continuous code at the tokenizer's spatial factor.</p>",
           _table(["", "PSNR (dB)", "SSIM"], [["tokenizer", report["psnr"], report["ssim"]],
                                              ["bilinear 8x reference", report["ref_psnr"],
                                               report.get("ref_ssim", "")]]),
           f"<p>Codebook: {100 * report['used']:.2f}% of {report['codebook_size']} codes used, perplexity "
           f"{report['perplexity']:.0f}.</p>"]
    per = report.get("per_clip", [])
    out.append(_table(["clip", "video", "start (s)", "PSNR", "SSIM", "ref PSNR"],
                      [[i, Path(c.get("video", "")).name, c.get("start", ""), c["psnr"], c["ssim"],
                        c.get("ref_psnr", "")] for i, c in enumerate(per)], left=2))
    figs = [_img(Path(c["gif"]), root, f"clip {i}: original | reconstruction, {c['psnr']:.2f} dB, SSIM {c['ssim']:.3f}")
            for i, c in enumerate(per) if c.get("gif") and Path(c["gif"]).exists()]
    out.append("<div>" + "".join(figs[:8]) + "</div>")
    card = report.get("model_card")
    if card:
        out.append(f'<p>Model card: <a href="{_rel(card, root)}">{html.escape(Path(card).name)}</a></p>')
    return "\n".join(out)


def shards_section(root: Path, summary: dict) -> str:
    index = _read_json(root / "shards" / "index.json")
    if index is None:
        return ""
    totals = index.get("totals", {})
    summary["shards"] = totals
    by_frames = ", ".join(f"{k}: {v}" for k, v in totals.get("samples_by_latent_frames", {}).items())
    return ("<h2>Pre-tokenized shards</h2>" +
            _table(["shards", "samples", "video tokens", "samples by latent frames"],
                   [[totals.get("shards"), totals.get("samples"), totals.get("video_tokens"), by_frames]], left=0))


def _frame_loss_series(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        for i, v in enumerate(r.get("frame_loss") or []):
            if v is not None:
                xs, ys = series.setdefault(f"latent frame {i}", ([], []))
                xs.append(r["step"])
                ys.append(v)
    return series


def _tail_mean(values: list[float], share: float = 0.25) -> float | None:
    if not values:
        return None
    tail = values[-max(1, int(len(values) * share)):]
    return sum(tail) / len(tail)


def training_section(root: Path, summary: dict, stages: list[str]) -> str:
    out, table, assets = ["<h2>Transformer training</h2>"], [], root / ASSETS
    summary["training"] = {}
    frame_tables = {}
    for name in stages:
        rows = _rows(root / name / "metrics.jsonl")
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        loss_png = line_chart({"loss": (steps, [r["loss"] for r in rows])}, assets / f"{name}_loss.png",
                              title=f"{name}: training loss", xlabel="step", ylabel="loss (nats / token)")
        figs = [_img(loss_png, root, f"{name}: loss per step")]
        series = _frame_loss_series(rows)
        if series:
            shown = dict(list(series.items())[:6])
            fl_png = line_chart(shown, assets / f"{name}_frame_loss.png", title=f"{name}: loss per latent frame",
                                xlabel="step", ylabel="mean loss of the frame's tokens")
            figs.append(_img(fl_png, root, f"{name}: mean loss per latent-frame index"))
            frame_tables[name] = {k: _tail_mean(ys) for k, (_, ys) in series.items()}
        seconds = sum(r.get("seconds", 0.0) for r in rows)
        tokens = sum(r.get("tokens", 0) for r in rows)
        cfg_path = root / name / "config.yaml"
        stats = {"steps": steps[-1], "final_loss": _tail_mean([r["loss"] for r in rows]),
                 "tokens_per_s": tokens / seconds if seconds else None, "seconds": seconds,
                 "frame_loss": frame_tables.get(name, {})}
        summary["training"][name] = stats
        table.append([name, stats["steps"], stats["final_loss"], stats["tokens_per_s"] or "", seconds])
        out.append(f"<h3>{html.escape(name)}</h3><div>{''.join(figs)}</div>")
        if cfg_path.exists():
            out.append(_details("resolved config", cfg_path.read_text()))
    if not table:
        return ""
    out.insert(1, _table(["run", "steps", "loss (last quarter)", "tokens/s", "train time (s)"], table))
    if frame_tables:
        n = max(len(t) for t in frame_tables.values())
        out.append("<h3>Per-latent-frame loss (mean over the last quarter of each run)</h3>")
        out.append(_table(["run"] + [f"frame {i}" for i in range(n)],
                          [[k] + [t.get(f"latent frame {i}", "") if t.get(f"latent frame {i}") is not None else ""
                                  for i in range(n)] for k, t in frame_tables.items()]))
    return "\n".join(out)


GENERATIONS = {"generate": "the demo's own transformer (trained above)",
               "generate_shipped": "the shipped transformer (checkpoints/t2v_cpu, see its model card)"}
"""Generation steps of a run folder (folder -> the model it used): each has its videos.json and, in
<folder>_eval/, the generation_eval.json of jobs.evaluate generation."""

TICK, CROSS = "\u2713", "\u2717"


def _alignment_table(al: dict) -> str:
    """Match rate per attribute and window (and all six at once), from summarise()['alignment']."""
    per_window = al.get("per_window") or []
    if not per_window:  # a report written before per-window rates existed
        per = {k: v for k, v in al.items() if isinstance(v, dict)}
        attrs = sorted({a for d in per.values() for a in d})
        return _table(["windows"] + attrs, [[k] + [d.get(a, "") for a in attrs] for k, d in per.items()])
    attrs = [k for k in per_window[0] if k not in ("window", "start_s", "videos")]
    return _table(["window", "from (s)", "videos"] + attrs,
                  [[w["window"], w["start_s"], w["videos"]] + [f"{100 * w[a]:.0f}%" for a in attrs]
                   for w in per_window], left=0)


def _detected_cells(expected: dict, window: dict) -> str:
    """One row of attributes: the detected value with a tick or a cross against the prompt's."""
    cells = []
    for key, ok in window["match"].items():
        got = window["detected"].get(key)
        mark = f'<span style="color:{"#080" if ok else "#c00"}">{TICK if ok else CROSS}</span>'
        want = "" if ok else f' <span class="muted">(asked {html.escape(str(expected.get(key)))})</span>'
        cells.append(f"<td class='l'>{mark} {key}: {html.escape(str(got))}{want}</td>")
    return "<table><tr>" + "".join(cells) + "</tr></table>"


def generation_section(root: Path, summary: dict) -> str:
    out = []
    summary["generation"] = {}
    for folder, model in GENERATIONS.items():
        gen = _read_json(root / folder / "videos.json")
        if gen is None:
            continue
        ev = _read_json(root / f"{folder}_eval" / "generation_eval.json") or {}
        per_video = {v["mp4"]: v for v in ev.get("per_video", [])}
        g = gen["generate"]
        out.append(f"<h2>Generated videos: {html.escape(model)}</h2>")
        out.append(f"<p>Model <code>{html.escape(str(gen.get('checkpoint')))}</code>. {len(gen['videos'])} video(s) "
                   f"of {g['seconds']:g} s at {gen['fps']:g} fps, {gen['size']} px; top-k {g['top_k']}, temperature "
                   f"{g['temperature']}, guidance {g['cfg_scale']}, windows of {g['window_latent_frames']} latent "
                   f"frames, re-encoding {'on' if g['reencode'] else 'off'}; {gen['wall_s']:.0f} s in all. Prompts "
                   f"are held out: no training clip shows their combination of attributes.</p>")
        entry = {"model": model, "checkpoint": gen.get("checkpoint"), "videos": len(gen["videos"]),
                 "seconds": g["seconds"], "wall_s": gen["wall_s"], "settings": g}
        for i, v in enumerate(gen["videos"]):
            out.append(f"<h3>{i + 1}. {html.escape(v['prompt'])}</h3>")
            out.append(f'<video controls loop muted width="256" src="{_rel(v["mp4"], root)}"></video> ')
            if v.get("mp4_x4") and Path(v["mp4_x4"]).exists():  # jobs.generate --upscaler
                out.append(f'<video controls loop muted width="512" src="{_rel(v["mp4_x4"], root)}"></video>'
                           f"<p class='muted'>left: {gen['size']} px as generated; right: 4x upscaled "
                           f"({4 * gen['size']} px)</p>")
            out.append(_img(Path(v["png"]), root, f"frame strip, {v['seconds']:.0f} s", cls="strip"))
            windows = (per_video.get(v["mp4"]) or {}).get("alignment") or []
            for w in windows[:1] + windows[-1:] if len(windows) > 1 else windows:
                out.append(f"<p class='muted'>detected in {w['start_s']:g}-{w['end_s']:g} s:</p>"
                           + _detected_cells(v.get("attributes") or {}, w))
        if ev:
            entry["drift"] = ev.get("drift")
            entry["alignment"] = ev.get("alignment")
            drift = ev.get("drift") or []
            if drift:
                keys = [k for k in ("colour_tv", "code_tv", "code_entropy_bits", "motion") if k in drift[0]]
                out.append(f"<h3>Drift from the first clip, per {ev['window_s']:g} s window (mean over videos)</h3>")
                out.append(_table(["window", "from (s)"] + keys,
                                  [[w["window"], w["start_s"]] + [w.get(k, "") for k in keys] for w in drift], left=0))
            al = ev.get("alignment") or {}
            if al:
                out.append(f"<h3>Prompt alignment per {ev['window_s']:g} s window ({al.get('videos')} prompts; "
                           f"share of videos whose pixels show the prompt's attribute)</h3>")
                out.append(_alignment_table(al))
        summary["generation"][folder] = entry
    return "\n".join(out)


def _comparison_tables(comparison: dict) -> str:
    """A comparison's numbers (jobs.evaluate compare): match rates per run and window; loss per
    latent frame of object cells per run, and the copy gain."""
    out, attributes = [], comparison.get("attributes", [])
    gen = comparison.get("generation") or {}
    if gen:
        out.append(_table(["run", "window from (s)", "videos"] + attributes,
                          [[label, w["start_s"], w["videos"]] + [f"{100 * w[a]:.0f}%" for a in attributes]
                           for label, r in gen.items() for w in r["per_window"]], left=1))
    frames = comparison.get("frames") or {}
    if frames:
        n = max(len(r["still_object"]) for r in frames.values())
        cells = lambda ys: [ys[i] if i < len(ys) and ys[i] is not None else "" for i in range(n)]  # noqa: E731
        out.append(_table(["run", "objects", "clips"] + [f"frame {i}" for i in range(n)] + ["copy gain"],
                          [[label, kind.split("_")[0], r["clips"]] + cells(r[kind]) + [r.get("copy_gain") or ""]
                           for label, r in frames.items() for kind in ("still_object", "moving_object")], left=2))
    return "\n".join(out)


def claims_section(root: Path, summary: dict) -> str:
    """Loong's claims as measured on the shipped transformer: the comparisons in the claims/ folder
    beside the checkpoint the generate_shipped step used, each as its verdict, tables and plot."""
    gen = _read_json(root / "generate_shipped" / "videos.json") or {}
    folder = Path(str(gen.get("checkpoint", ""))).parent / "claims"
    found = sorted(folder.glob("*/comparison.json")) if gen.get("checkpoint") and folder.is_dir() else []
    if not found:
        return ""
    out = ["<h2>Loong's claims, measured on the shipped transformer</h2>",
           f"<p>Measured once on the shipped model (its model card has the commands), not by this demo: "
           f"<code>{html.escape(str(folder))}</code>, written by <code>python -m jobs.evaluate compare</code>. "
           "The demo's own re-weighting ablation is the stage2 and stage2_plain rows of the "
           "per-latent-frame loss table above.</p>"]
    summary["claims"] = {}
    for path in found:
        comparison = _read_json(path) or {}
        name = path.parent.name
        summary["claims"][name] = {"title": comparison.get("title", ""), "verdict": comparison.get("verdict", "")}
        out.append(f"<h3>{html.escape(comparison.get('title') or name)}</h3>")
        if comparison.get("verdict"):
            out.append(f"<p>{html.escape(comparison['verdict'])}</p>")
        out.append(_comparison_tables(comparison))
        png = path.parent / "comparison.png"
        if png.exists():
            copy = root / ASSETS / f"claim_{name}.png"
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, copy)
            out.append(_img(copy, root, f"{name}: {comparison.get('title', '')}", cls="strip"))
    return "\n".join(out)


def configs_section(root: Path) -> str:
    out = ["<h2>Resolved configs</h2>"]
    paths = sorted(root.glob("*/config.yaml")) + ([root / "config.yaml"] if (root / "config.yaml").exists() else [])
    out += [_details(os.path.relpath(path.resolve(), root.resolve()), path.read_text()) for path in paths]
    return "\n".join(out)


def _details(summary: str, text: str) -> str:
    """A collapsed block: `summary` shown, `text` preformatted underneath (both HTML-escaped)."""
    return f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"


def write_report(root: Path, title: str = "loong-dist run", command: str = "",
                 stages: list[str] | None = None) -> tuple[Path, dict]:
    """Write root/report.html and root/summary.json; returns (html path, summary)."""
    root = Path(root)
    previous = _read_json(root / "summary.json") or {}
    steps = {}
    for done in sorted(root.glob("*/.done"), key=lambda p: p.stat().st_mtime):
        rec = _read_json(done) or {}
        steps[done.parent.name] = rec
    summary: dict[str, Any] = {"out": str(root), "title": title, "command": command or previous.get("command", ""),
                               "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": platform.platform(),
                               "cpus": os.cpu_count(), "steps": steps}
    stages = stages if stages is not None else [d.name for d in sorted(root.iterdir())
                                                if (d / "metrics.jsonl").exists()] if root.exists() else []
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='muted'>{html.escape(summary['written'])} on {html.escape(summary['machine'])}, "
            f"{summary['cpus']} CPUs. Command: <code>{html.escape(summary['command'])}</code></p>",
            steps_section(root, summary), tokenizer_section(root, summary), shards_section(root, summary),
            training_section(root, summary, stages), generation_section(root, summary),
            claims_section(root, summary), configs_section(root)]
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title) +
            f"</title><style>{STYLE}</style></head><body>" + "\n".join(b for b in body if b) + "</body></html>\n")
    out = root / "report.html"
    tmp = root / ".report.html.tmp"
    tmp.write_text(page)
    tmp.replace(out)
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return out, summary
