"""``segdeploy eval``'s reports: JSON, Markdown, a rich table, the per-class IoU plot, the worst images.

Every file is written through ``segdeploy.fileio`` (complete or not at all). The worst images are
panels of four: the image, the truth, the prediction (class colors; unscored truth pixels white), and
the disagreement map (the image dimmed, wrong pixels red, unscored pixels black).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segdeploy.errors import UserInputError
from segdeploy.fileio import check_output_path, write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    from rich.table import Table

    from segdeploy.evaluate import EvalResult

REPORT_SUFFIXES = (".json", ".md")
WRONG_BGR = (0, 0, 255)
UNSCORED_TRUTH_BGR = (255, 255, 255)


def check_report_path(path: str | os.PathLike[str]) -> Path:
    """Check, before any work, that a report can be written: a ``.json`` or ``.md`` file in an existing directory.

    Raises:
        UserInputError: another suffix, a missing directory, or a directory in the way.
    """
    target = check_output_path(path)
    if target.suffix.lower() not in REPORT_SUFFIXES:
        raise UserInputError(f"--report {target}: name a .json or .md file (the suffix picks the format)")
    return target


def write_report(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """The JSON or Markdown report, by the file's suffix."""
    target = check_report_path(path)
    if target.suffix.lower() == ".json":
        return write_text_atomic(target, json.dumps(result.to_dict(), indent=2) + "\n")
    return write_text_atomic(target, markdown(result))


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def summary_rows(result: EvalResult) -> list[list[str]]:
    """One row per candidate: name, runtime, precision, mIoU, change, pixel accuracy, change, agreement, images."""
    rows = []
    for index, (spec, scores) in enumerate(zip(result.candidates, result.partial.scores)):
        change = result.change(index)
        first = index == 0
        rows.append(
            [
                spec.name, spec.runtime.value, spec.precision.value, _pct(scores.miou),
                "baseline" if first else _pct(change["miou"], signed=True), _pct(scores.pixel_accuracy),
                "baseline" if first else _pct(change["pixel_accuracy"], signed=True),
                "-" if first else _pct(change["agreement"]), str(scores.images),
            ]
        )  # fmt: skip
    return rows


SUMMARY_HEADERS = (
    "candidate", "runtime", "precision", "mIoU %", "change", "pixel acc %", "change", "agrees with first %", "images",
)  # fmt: skip


def markdown(result: EvalResult) -> str:
    """The summary table, then per-class IoU (a row per class, a column per candidate), ending with a newline."""
    lines = [
        f"# segdeploy eval: {result.dataset}",
        "",
        f"{result.partial.scores[0].images} images, {result.partial.scores[0].pixels} scored pixels "
        f"(ignore index {result.ignore_index}); changes are against the first candidate, in points.",
        "",
        "| " + " | ".join(SUMMARY_HEADERS) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(SUMMARY_HEADERS))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(result)]
    names = [spec.name for spec in result.candidates]
    lines += ["", "## IoU per class (%)", "", "| class | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    per_class = [scores.per_class_iou for scores in result.partial.scores]
    for c, label in enumerate(result.labels):
        lines.append(f"| {label} | " + " | ".join(_pct(ious[c]) for ious in per_class) + " |")
    lines += ["", "`-` marks a class absent from both truth and prediction (left out of the mean)."]
    worst = [(spec.name, images) for spec, images in zip(result.candidates, result.partial.worst) if images]
    if worst:
        lines += ["", "## Lowest image mIoU", ""]
        for name, images in worst:
            lines.append(f"- {name}: " + ", ".join(f"{w.stem} ({_pct(w.score)})" for w in images))
    return "\n".join(lines) + "\n"


def summary_table(result: EvalResult) -> Table:
    """The summary as a rich table."""
    from rich.table import Table

    table = Table(title=f"segdeploy eval: {result.dataset}")
    for i, header in enumerate(SUMMARY_HEADERS):
        table.add_column(header, justify="left" if i < 3 else "right")
    for row in summary_rows(result):
        table.add_row(*row)
    return table


# --------------------------------------------------------------------------- plot
def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """Check, before any work, that the plot can be drawn and written (.png/.svg/.pdf, matplotlib present).

    Raises:
        UserInputError: a bad file name. MissingDependencyError: no matplotlib.
    """
    from segdeploy.report import check_plot_target

    return check_plot_target(path)


def plot_per_class(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Grouped bars of per-class IoU, one bar per candidate (absent classes draw no bar)."""
    from segdeploy.report import save_figure

    target = check_plot_path(path)
    import matplotlib.pyplot as plt

    names = [spec.name for spec in result.candidates]
    classes = len(result.labels)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * classes * max(len(names), 1) ** 0.5 + 2), 4.5))
    for i, (name, scores) in enumerate(zip(names, result.partial.scores)):
        ious = [np.nan if v is None else 100 * v for v in scores.per_class_iou]
        xs = np.arange(classes) + (i - (len(names) - 1) / 2) * width
        ax.bar(xs, ious, width, label=f"{name} (mIoU {_pct(scores.miou)})")
    ax.set_xticks(
        range(classes), result.labels, rotation=45 if classes > 6 else 0, ha="right" if classes > 6 else "center"
    )
    ax.set_ylabel("IoU, %")
    ax.set_ylim(0, 100)
    ax.set_title(f"segdeploy eval: IoU per class, {result.dataset}")
    ax.legend(fontsize="small")
    return save_figure(fig, target)


# --------------------------------------------------------------------------- worst images
def save_worst(result: EvalResult, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Each candidate's worst images as panels in ``out_dir/worst/<index>_<candidate>/<rank>_<stem>.png``."""
    from segdeploy.pixels import opencv, read_image

    cv2 = opencv()
    colors = np.array([c[::-1] for c in result.colors], dtype=np.uint8)  # BGR
    written = []
    for index, (spec, images) in enumerate(zip(result.candidates, result.partial.worst)):
        folder = Path(out_dir) / "worst" / f"{index}_{_slug(spec.name)}"
        folder.mkdir(parents=True, exist_ok=True)
        for rank, worst in enumerate(images, 1):
            frame = read_image(worst.image)
            truth = result.masks.read(worst.mask)
            panel = disagreement_panel(frame, truth, worst.prediction, colors, result.ignore_index)
            ok, data = cv2.imencode(".png", panel)
            if not ok:
                raise UserInputError(f"OpenCV could not encode the panel of {worst.stem}")
            written.append(write_bytes_atomic(folder / f"{rank:02d}_{worst.stem}.png", data.tobytes()))
    return written


def disagreement_panel(
    frame: np.ndarray, truth: np.ndarray, prediction: np.ndarray, colors: np.ndarray, ignore_index: int | None
) -> np.ndarray:
    """Image | truth | prediction | disagreement, side by side (BGR)."""
    unscored = truth == ignore_index if ignore_index is not None else np.zeros(truth.shape, bool)
    safe_truth = np.where(unscored, 0, truth).astype(np.intp).clip(0, len(colors) - 1)
    truth_colors = colors[safe_truth]
    truth_colors[unscored] = UNSCORED_TRUTH_BGR
    grey = (frame.mean(axis=2, keepdims=True) * 0.5).astype(np.uint8).repeat(3, axis=2)
    errors = grey.copy()
    errors[(prediction != truth) & ~unscored] = WRONG_BGR
    errors[unscored] = 0
    return np.concatenate([frame, truth_colors, colors[prediction.astype(np.intp)], errors], axis=1)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name or name).strip("_") or "candidate"
