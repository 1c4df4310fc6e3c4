"""Commands on your own data: predict (masks to look at) and eval (mIoU of each candidate on labeled images)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from segdeploy.artifact import Runtime
from segdeploy.cli.common import JsonFlag, app, guarded, make_console
from segdeploy.errors import UserInputError

if TYPE_CHECKING:
    from segdeploy.datasets import DatasetSpec
    from segdeploy.distributed import RayOptions

RayOption = Annotated[
    bool, typer.Option("--ray", help="Spread the work over a Ray cluster (pip install 'segdeploy[ray]').")
]
RayAddressOption = Annotated[
    Optional[str], typer.Option("--ray-address", help="An existing Ray cluster (default: start a local one).")
]
RayWorkersOption = Annotated[
    Optional[int], typer.Option("--ray-workers", help="Ray workers, one runner each (default: one per CPU).")
]
ThreadsOption = Annotated[Optional[int], typer.Option(help="CPU threads per runner (default: the runtime's).")]


def _ray(enabled: bool, address: str | None, workers: int | None) -> RayOptions | None:
    if not enabled:
        if address or workers:
            raise UserInputError("--ray-address and --ray-workers go with --ray")
        return None
    if workers is not None and workers < 1:
        raise UserInputError(f"--ray-workers must be at least 1, got {workers}")
    from segdeploy.distributed import RayOptions, ray_module

    ray_module()  # a missing extra fails before any work
    return RayOptions(address=address, workers=workers)


class _Bar:
    """A rich progress bar on stderr, shown only on a terminal; yields ``update(done, total, what)``."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __enter__(self) -> Callable[..., None]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = make_console(True)
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=not console.is_terminal,
        )  # fmt: skip
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=None)

        def update(done: int, total: int, what: str = "") -> None:
            self._bar.update(self._task, completed=done, total=total, description=what or self.description)

        return update

    def __exit__(self, *exc: Any) -> None:
        self._bar.stop()


# --------------------------------------------------------------------------- predict
@app.command("predict")
@guarded
def predict_cmd(
    model: Annotated[
        str, typer.Argument(help="An ONNX file, a TensorRT plan (with its sidecar) or a bundle directory.")
    ],
    inputs: Annotated[list[str], typer.Argument(help="Images, videos, directories or globs (quote globs).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory (created when missing).")],
    engine: Annotated[
        Optional[Runtime],
        typer.Option(
            "--engine", case_sensitive=False, help="ort, trt (a bundle's plan) or torch (the rebuilt PyTorch model)."
        ),
    ] = None,
    alpha: Annotated[float, typer.Option(help="Overlay: weight of the class colors, 0 to 1.")] = 0.5,
    overlay: Annotated[
        bool, typer.Option("--overlay/--no-overlay", help="Also write <stem>_overlay.jpg / .mp4.")
    ] = True,
    palette: Annotated[
        Optional[Path],
        typer.Option(help="Class colors: a name,r,g,b CSV or 'R G B name' lines (default: the bundle's or VOC's)."),
    ] = None,
    threads: ThreadsOption = None,
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    ray_workers: RayWorkersOption = None,
) -> None:
    """Write class maps people can look at: <stem>.png (palette PNG, pixel values = class indices), overlays, videos.

    Frames go to the model's valid sizes and back as the model's metadata (or the bundle's manifest)
    describes. Inputs are streamed: memory stays bounded whatever their number or length.
    """
    from segdeploy.predict import predict

    with _Bar("predicting") as bar:
        summary = predict(
            model, inputs, output, runtime=engine, alpha=alpha, overlay=overlay, palette_file=palette,
            threads=threads, ray=_ray(ray, ray_address, ray_workers), progress=bar,
        )  # fmt: skip
    parts = [f"{summary.images} image(s)"] + (
        [f"{summary.videos} video(s) ({summary.frames} frames)"] if summary.videos else []
    )
    typer.echo(f"{', '.join(parts)} -> {output} ({len(summary.files)} files)")


# --------------------------------------------------------------------------- eval
def dataset_spec(
    *,
    images: Path | None,
    masks: Path | None,
    palette: Path | None,
    voc: Path | None,
    cityscapes: Path | None,
    camvid: Path | None,
    split: str,
    data: str | None,
) -> DatasetSpec:
    """The one labeled set the options name.

    Raises:
        UserInputError: none or several sets, ``--images`` without ``--masks``, or a palette where none applies.
    """
    from segdeploy.datasets import DatasetSpec

    named = [
        name
        for name, value in (("--images/--masks", images or masks), ("--voc", voc), ("--cityscapes", cityscapes),
                            ("--camvid", camvid), ("--data", data))
        if value
    ]  # fmt: skip
    if len(named) != 1:
        raise UserInputError(
            "name one labeled set: --images DIR --masks DIR, --voc ROOT, --cityscapes ROOT, --camvid ROOT or "
            "--data voc:ROOT:SPLIT" + (f" (got {', '.join(named)})" if named else "")
        )
    if images or masks:
        if not (images and masks):
            raise UserInputError("--images and --masks go together: masks pair with images by file stem")
        return DatasetSpec("pairs", images, masks=masks, palette=palette)
    if data:
        spec = DatasetSpec.parse(data, default_split=split)
        if spec.layout == "images":
            raise UserInputError(f"--data {data}: name a layout (voc:ROOT:SPLIT, cityscapes:..., camvid:...)")
    else:
        layout, root = next((n, r) for n, r in (("voc", voc), ("cityscapes", cityscapes), ("camvid", camvid)) if r)
        spec = DatasetSpec(layout, root, split=split)
    if palette is not None and spec.layout != "camvid":
        raise UserInputError("--palette maps color masks: use it with --images/--masks or CamVid")
    return DatasetSpec(spec.layout, spec.root, split=spec.split, palette=palette)


@app.command("eval")
@guarded
def eval_cmd(
    candidates: Annotated[
        list[str],
        typer.Argument(help="ONNX files, TensorRT plans, bundle directories, and pytorch; the first is the baseline."),
    ],
    images: Annotated[Optional[Path], typer.Option(help="Images; masks pair with them by file stem.")] = None,
    masks: Annotated[
        Optional[Path], typer.Option(help="Masks: class-index or palette PNGs (or colors, --palette).")
    ] = None,
    palette: Annotated[
        Optional[Path], typer.Option(help="Color masks: a name,r,g,b CSV or 'R G B name' lines, in class order.")
    ] = None,
    voc: Annotated[Optional[Path], typer.Option(help="PASCAL VOC root (VOCdevkit/VOC2012).")] = None,
    cityscapes: Annotated[
        Optional[Path], typer.Option(help="Cityscapes root (leftImg8bit/, gtFine/); 19 train ids.")
    ] = None,
    camvid: Annotated[
        Optional[Path], typer.Option(help="CamVid root (SPLIT/ with SPLIT_labels/ or SPLITannot/).")
    ] = None,
    split: Annotated[str, typer.Option(help="The split of --voc, --cityscapes or --camvid.")] = "val",
    data: Annotated[
        Optional[str],
        typer.Option("--data", help="A set as export --calib names it: voc:ROOT:SPLIT, cityscapes:..., camvid:..."),
    ] = None,
    ignore_index: Annotated[int, typer.Option("--ignore-index", help="Mask value scored for no class.")] = 255,
    labels: Annotated[Optional[Path], typer.Option(help="Class names, one per line.")] = None,
    weights: Annotated[
        Optional[Path], typer.Option(help="pytorch: the checkpoint (default: the one the file's metadata records).")
    ] = None,
    worst: Annotated[int, typer.Option(help="Worst images kept per candidate (saved with -o).")] = 5,
    output: Annotated[
        Optional[Path], typer.Option("-o", "--output", help="Directory for the worst images' disagreement maps.")
    ] = None,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Per-class IoU bar plot (.png/.svg/.pdf; needs matplotlib).")
    ] = None,
    as_json: JsonFlag = False,
    report: Annotated[
        Optional[list[Path]], typer.Option("--report", help="Write the report: .json or .md by suffix (repeatable).")
    ] = None,
    batch: Annotated[int, typer.Option(help="Images of one size run together.")] = 1,
    threads: ThreadsOption = None,
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    ray_workers: RayWorkersOption = None,
) -> None:
    """Score candidates on labeled images: mIoU, pixel accuracy, per-class IoU, the change against the first.

    IoU per class comes from the confusion matrix summed over the whole set (ignore-index pixels left
    out); mIoU is the mean over the classes present in truth or prediction, as mmseg and torchmetrics
    define it.
    """
    import json

    from segdeploy.eval_report import check_plot_path, check_report_path, plot_per_class, save_worst, summary_table
    from segdeploy.eval_report import write_report as write_eval_report
    from segdeploy.evaluate import evaluate

    spec = dataset_spec(
        images=images, masks=masks, palette=palette, voc=voc, cityscapes=cityscapes, camvid=camvid, split=split,
        data=data,
    )  # fmt: skip
    for path in report or []:
        check_report_path(path)
    if plot is not None:
        check_plot_path(plot)
    if output is not None and output.exists() and not output.is_dir():
        raise UserInputError(f"-o {output} is a file: eval writes the worst images into a directory")
    with _Bar("evaluating") as bar:
        result = evaluate(
            candidates, spec, ignore_index=ignore_index, weights=weights, labels_file=labels, worst=worst,
            batch=batch, threads=threads, ray=_ray(ray, ray_address, ray_workers),
            progress=lambda done, total: bar(done, total, "evaluating"),
        )  # fmt: skip
    for path in report or []:
        write_eval_report(result, path)
    if plot is not None:
        plot_per_class(result, plot)
    saved = save_worst(result, output) if output is not None else []
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    console = make_console()
    console.print(summary_table(result))
    if saved:
        console.print(f"worst images: {len(saved)} panels in {output / 'worst'}", markup=False)
