"""The evaluation's outputs: metrics.json, report.md, the sample grid and the training-curve plot."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from attngan.fileio import atomic_write_text
from trainer.evaluate.complexity import human

REPORT_NOTE = (
    "These numbers are measured by `attngan evaluate` on the data set named above. They are NOT the paper's "
    "numbers: published CUB figures use 30,000 images, real CUB, and (for IS/FID) specific Inception weights."
)


def accuracy_text(generated: dict[str, Any]) -> str:
    """A score's accuracy with its 95% interval when it has one: 85.5% (95% interval 84.1-86.7%)."""
    text = f"{100 * generated['accuracy']:.1f}%"
    lo, hi = generated.get("interval_95", (float("nan"), float("nan")))
    return text if math.isnan(lo) else f"{text} (95% interval {100 * lo:.1f}-{100 * hi:.1f}%)"


def _font(size: int = 12) -> ImageFont.ImageFont:
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default()


def write_metrics_json(out_dir: Path, metrics: dict[str, Any]) -> Path:
    text = json.dumps(metrics, indent=2, sort_keys=False, default=float) + "\n"
    return atomic_write_text(out_dir / "metrics.json", text)


def sample_grid(rows: list[dict[str, Any]], width: int = 1024) -> Image.Image:
    """One block per caption: the caption, its 64/128/256 images side by side, then its attention grids.

    rows: [{"caption": str, "images": [PIL...], "attention": [PIL...]}].
    """
    font = _font(14)
    pad = 8
    blocks: list[Image.Image] = []
    for row in rows:
        imgs: list[Image.Image] = row["images"]
        att: list[Image.Image] = row.get("attention", [])
        img_h = max(i.height for i in imgs)
        parts_h = 24 + img_h + sum(pad + a.height * min(1.0, (width - 2 * pad) / a.width) for a in att) + pad
        block = Image.new("RGB", (width, int(parts_h)), "white")
        draw = ImageDraw.Draw(block)
        draw.text((pad, 4), row["caption"], fill="black", font=font)
        x = pad
        for im in imgs:  # bottom-aligned at native sizes, so the 64 and 128 images look their size
            block.paste(im.convert("RGB"), (x, 24 + img_h - im.height))
            draw.text((x, 24 + img_h - im.height - 0), "", fill="black")
            x += im.width + pad
        y = 24 + img_h + pad
        for a in att:
            scale = min(1.0, (width - 2 * pad) / a.width)
            a = a.convert("RGB").resize((int(a.width * scale), int(a.height * scale)))
            block.paste(a, (pad, y))
            y += a.height + pad
        blocks.append(block)
    total_h = sum(b.height for b in blocks) + pad * (len(blocks) + 1)
    grid = Image.new("RGB", (width, max(total_h, 1)), (230, 230, 230))
    y = pad
    for b in blocks:
        grid.paste(b, (0, y))
        y += b.height + pad
    return grid


def read_scalars(logs_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under `logs_dir` (recursively), by tag. Each resume
    writes a new file (named by its start time); a step logged again after a hard kill keeps the later value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = defaultdict(dict)
    files = sorted(p for p in Path(logs_dir).rglob("events.out.tfevents.*") if p.is_file())
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series[tag].update((e.step, float(e.value)) for e in acc.Scalars(tag))
    return {tag: sorted(v.items()) for tag, v in series.items()}


def read_runs_scalars(logs_dirs: list[Path]) -> tuple[dict[str, list[tuple[int, float]]], list[tuple[int, str]]]:
    """The scalar series of runs that ran one after another (a grown model: the 64 px stage, then all three
    stages started from it), on one step axis: each run's steps follow the last step of the runs before it.
    Also returns where each run starts, (step, run name), to mark on the plot."""
    joined: dict[str, list[tuple[int, float]]] = defaultdict(list)
    starts: list[tuple[int, str]] = []
    offset = 0
    for logs_dir in logs_dirs:
        series = read_scalars(logs_dir)
        if not series:
            continue
        starts.append((offset, run_name(logs_dir)))
        for tag, points in series.items():
            joined[tag] += [(offset + step, value) for step, value in points]
        offset += max(step for points in series.values() for step, _ in points)
    return dict(joined), starts


def run_name(path: str | Path) -> str:
    """A training output directory's name, whether a path names it or its logs/ folder."""
    path = Path(path).resolve()
    return path.parent.name if path.name == "logs" else path.name


def plot_training_curves(series: dict[str, list[tuple[int, float]]], out_png: Path,
                         starts: list[tuple[int, str]] | None = None, bundle_step: int | None = None) -> Path:
    """One panel per tag group (the part before '/'), one line per tag; where each run of `starts` (from
    read_runs_scalars) begins, a dashed line and its name, and the step the bundle was taken at, a solid one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[str]] = defaultdict(list)
    for tag in series:
        groups[tag.split("/")[0] if "/" in tag else tag].append(tag)
    n = len(groups)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    width = 5 if n > 1 else 9  # one panel (all tags in one group) gets the page's width
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.6 * rows), squeeze=False)
    marks = [(step, name, "dimgray", "--") for step, name in starts or []] if len(starts or []) > 1 else []
    if bundle_step is not None:
        marks.append((bundle_step, "bundle", "black", "-"))
    for ax, (group, tags) in zip(axes.flat, sorted(groups.items())):
        for tag in sorted(tags):
            steps, values = zip(*series[tag])
            ax.plot(steps, values, label=tag.split("/", 1)[-1], linewidth=1)
        for step, label, color, style in marks:  # a vertical line with its label written along it
            ax.axvline(step, color=color, linestyle=style, linewidth=0.8)
            ax.text(step, 0.98, f" {label}", transform=ax.get_xaxis_transform(), fontsize=7, color=color,
                    rotation=90, va="top", ha="right")
        ax.set_title(group)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(tags) > 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _latency_line(lat: dict) -> str:
    """The median, and the fastest run with the load average beside it: on a busy machine (training beside the
    evaluation) the median reads high, and the fastest run is the one to compare."""
    line = (f"- CPU latency, batch 1, caption to all images: median {lat['median_ms']:.0f} ms, fastest "
            f"{lat.get('min_ms', lat['median_ms']):.0f} ms over {lat['runs']} runs ({lat['threads']} threads, fp32")
    if "load_average" in lat:
        line += f"; load average {lat['load_average']:.1f} when measured"
    return line + ")"


def render_markdown(m: dict[str, Any]) -> str:
    """report.md from the metrics dictionary (the same one written to metrics.json)."""
    L: list[str] = []
    b, d = m["bundle"], m["data"]
    k = m["protocol"].get("candidates", 1)
    best_of = (f" (each the best of {k} candidates by the bundle's DAMSM encoders, as `attngan generate "
               f"--candidates {k}` serves)" if k > 1 else "")
    psi = m["protocol"].get("truncation", 1.0)
    best_of += f", noise truncated to {psi:g} of its spread (`--truncation {psi:g}`)" if psi != 1 else ""
    L += [f"# Evaluation of bundle `{b['version']}`", "",
          (f"- Bundle: `{b['path']}`; data: `{d['path']}` ({d['split']} split, {d['n_items']} images, "
          f"{d['n_classes']} classes); {m['protocol']['n_images']} generated images{best_of}, seed "
          f"{m['protocol']['seed']}, device {m['protocol']['device']}, {m['protocol']['seconds']:.0f} s."),
          f"- {REPORT_NOTE}", ""]
    if d.get("unknown_word_rate"):
        L += [(f"- {100 * d['unknown_word_rate']:.1f}% of the test captions' words are not in the bundle's "
              f"vocabulary and were dropped."), ""]
    # Quality
    L += ["## Quality", "", "| metric | value | reference point | notes |", "|---|---|---|---|"]
    rp = m.get("r_precision")
    if rp and "mean" in rp:
        L.append(f"| R-precision (top-1 of {rp['candidates']}) | {_pct(rp['mean'])} ± {_pct(rp['std'])} | "
                 f"chance {_pct(rp['chance'])} | DM-GAN protocol, {rp['folds']} folds of {rp['n_images']} images; "
                 f"DAMSM = the bundle's own encoders"
                 + (f"; overstated: these encoders also picked each image from {k} candidates" if k > 1 else "")
                 + " |")
        if "real_images" in rp:
            real = rp["real_images"]
            L.append(f"| R-precision of the real test images | {_pct(real['mean'])} ± {_pct(real['std'])} | "
                     f"chance {_pct(rp['chance'])} | the same captions and candidates ranked for the real image: "
                     f"the ceiling the DAMSM encoders set |")
        if "attribute_oracle" in rp:
            oracle = rp["attribute_oracle"]
            L.append(f"| R-precision of a perfect attribute reader | {_pct(oracle['mean'])} ± {_pct(oracle['std'])} | "
                     f"chance {_pct(rp['chance'])} | the same candidates scored from the ground-truth attributes "
                     f"(+1 per named attribute the bird has, -10 per one it lacks): the ceiling these captions allow |")
    elif rp:
        L.append(f"| R-precision | skipped | | {rp.get('skipped')} |")
    fid = m.get("fid", {})
    for key, row in fid.items():
        if not isinstance(row, dict):
            continue
        if "value" in row:
            ref = f"untrained generator: {row['untrained']:.4g}" if row.get("untrained") is not None else ""
            L.append(f"| {row['label']} | {row['value']:.4g} | {ref} | {row['note']} |")
        elif "skipped" in row:
            label = {"inception": "FID (Inception-v3)", "damsm": "DAMSM-FID"}.get(key, key)
            L.append(f"| {label} | skipped | | {row['skipped']} |")
    dv = m.get("diversity")
    if dv:
        real = (f"real: {dv['real']:.1f} (up to {dv['seeds']} test images of one species, {dv['species']} species)"
                if "real" in dv else "")
        ratio = f"ratio **{dv['ratio']:.2f}**; " if dv.get("ratio") is not None else ""
        L.append(f"| seed diversity (mean pairwise L1 of {dv['seeds']} seeds' {dv['size']} px birds, 0-255) | "
                 f"{dv['generated']:.1f} | {real} | {ratio}{dv['captions']} captions; a mode-collapse check, not a "
                 "quality score: far below 1, the generator draws one bird whatever its noise |")
    isc = m.get("inception_score")
    if isc and "mean" in isc:
        L.append(f"| Inception Score | {isc['mean']:.2f} ± {isc['std']:.2f} | | {isc['note']} |")
    elif isc:
        L.append(f"| Inception Score | skipped | | {isc.get('skipped')} |")
    L.append("")
    # Faithfulness
    f = m.get("faithfulness")
    L += ["## Caption faithfulness (synthetic birds)", ""]
    if not f or "skipped" in f:
        L += [f"Skipped: {f.get('skipped') if f else 'not run'}", ""]
    else:
        j, g = f["judge"], f["generated"]
        L += [(f"An attribute classifier trained on {j['n_train']} real synthetic renders judges each generated "
              f"bird on the attributes its caption names. Its own accuracy on {j['n_held_out']} real held-out "
              f"renders is **{_pct(j['held_out']['accuracy'])}**; generated birds: **{accuracy_text(g)}** "
              f"of {g['n']} named attributes correct (a binomial interval: verdicts on one bird are not "
              f"independent, so it is the narrowest the spread can be); {_pct(g['per_image_all_correct'])} of "
              "birds have every named attribute right."
              + (f" {_pct(g['swapped'])} of the named attributes got a colour the same caption names for another "
                 "part (colours drawn, but not bound to their parts)." if "swapped" in g else "")
              + (f" The judge is `{f['judge_from']}`'s (`--judge`), so these scores compare with that "
                 "evaluation's." if f.get("judge_from") else "")), "",
              "| attribute | generated (named in caption) | judge on real renders |", "|---|---|---|"]
        for part in j["held_out"]["per_part"]:
            gen = g["per_part"].get(part)
            cnt = g["counts"].get(part, 0)
            L.append(f"| {part} | {_pct(gen)} ({cnt}) | {_pct(j['held_out']['per_part'][part])} |")
        L.append("")
        for part, why in (j.get("not_judgeable") or {}).items():
            L.append(f"- {part}: **not judgeable**, left out of both columns ({why})")
        L.append("") if j.get("not_judgeable") else None
    # Bars
    bars = m.get("quality_bars")
    if bars:
        L += ["## Quality bars", "", "| bar | target | measured | met |", "|---|---|---|---|"]
        for bar in bars:
            L.append(f"| {bar['name']} | {bar['target']} | {bar['measured']} | {'yes' if bar['met'] else 'NO'} |")
        L.append("")
        missed = [bar for bar in bars if not bar["met"]]
        if missed:
            L += ["Bars not reached: " + "; ".join(f"{bar['name']}: {bar.get('why', '')}" for bar in missed), ""]
    # Complexity
    c = m.get("complexity")
    if c:
        L += ["## Complexity", "", "| network | parameters |", "|---|---|"]
        for net, n in c["parameters"].items():
            L.append(f"| {net} | {n:,} ({human(n)}) |")
        L += ["", "| image size | FLOPs per image (text encoder + generator up to that size) |", "|---|---|"]
        for size, fl in c["flops_per_image"].items():
            L.append(f"| {size} px | {human(fl, 'FLOP')} |")
        L += ["", f"- Bundle size on disk: {c['bundle_bytes'] / 1e6:.1f} MB",
              _latency_line(c["cpu_latency"]),
              "- FLOPs count matmul/conv multiply-adds as 2 (torch.utils.flop_counter).", ""]
    # Pictures
    pics = m.get("pictures", {})
    if pics:
        L += ["## Pictures", ""]
        if pics.get("samples"):
            L += ["Test captions with their 64/128/256 images and per-word attention maps:", "",
                  f"![samples]({pics['samples']})", ""]
        if pics.get("training_curves"):
            L += ["Training curves:", "", f"![training curves]({pics['training_curves']})", ""]
        elif pics.get("training_curves_skipped"):
            L += [f"Training curves: {pics['training_curves_skipped']}", ""]
    L += ["## How to get the paper-protocol numbers", "",
          ("On real CUB (`--data` the CUB folder with `captions.pickle`), use `--images 30000` and give "
          "`--inception-weights` a local Inception-v3 file; R-precision then follows DM-GAN's protocol exactly "
          "(30,000 images, 10 folds, 99 mismatched captions from other classes)."), ""]
    return "\n".join(L)
