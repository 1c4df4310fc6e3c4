"""``segdeploy predict``: masks people can look at, for images, directories, globs and videos.

For an image ``<stem>.*`` it writes ``<stem>.png``, a palette PNG whose pixel values are the class
indices (the colors only show them), and ``<stem>_overlay.jpg``, the class colors blended over the
frame. A video gives ``<stem>_overlay.mp4`` (MPEG-4 Part 2, ``mp4v``) and ``<stem>/NNNNNN.png`` per frame.
Frames go to the model and back through the candidate's ``FramePipeline``; they are streamed (decoded
one queue ahead of the model), so memory stays bounded whatever the inputs. Every file appears
complete under its name or not at all.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.errors import UserInputError
from segdeploy.fileio import write_bytes_atomic
from segdeploy.pixels import IMAGE_SUFFIXES, VIDEO_SUFFIXES, opencv, read_image
from segdeploy.streams import prefetch

if TYPE_CHECKING:
    from segdeploy.candidates import CandidateSpec
    from segdeploy.distributed import RayOptions

Progress = Callable[[int, str], None]
"""Called with the frames done since the last call and what is being worked on."""

VIDEO_FOURCC = "mp4v"
DEFAULT_FPS = 25.0
JPEG_QUALITY = 90
PNG_COMPRESSION = 3  # class maps compress well; zlib level 3 is within a few percent of 9 and much faster


@dataclass(frozen=True)
class PredictInput:
    """One input: an image or a video, and the stem its outputs are named after."""

    path: Path
    kind: str  # "image" or "video"

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class PredictOptions:
    """Where and how predictions are written.

    Attributes:
        out_dir: the output directory (created when missing).
        colors: the RGB color of each class.
        alpha: the overlay's color weight, 0 (the frame) to 1 (the colors).
        overlay: write ``_overlay.jpg`` / ``_overlay.mp4``.
    """

    out_dir: Path
    colors: tuple[tuple[int, int, int], ...]
    alpha: float = 0.5
    overlay: bool = True


@dataclass
class PredictSummary:
    """What a run wrote."""

    images: int = 0
    videos: int = 0
    frames: int = 0  # of the videos
    files: list[str] = field(default_factory=list)

    def merge(self, other: PredictSummary) -> None:
        self.images += other.images
        self.videos += other.videos
        self.frames += other.frames
        self.files.extend(other.files)


# --------------------------------------------------------------------------- inputs
def expand_inputs(inputs: Sequence[str]) -> list[PredictInput]:
    """Images and videos named by files, directories (their direct entries, sorted) and globs, in order.

    Raises:
        UserInputError: nothing named, a name that matches nothing, a file of unknown type, or two inputs
            whose outputs would collide (the same stem).
    """
    if not inputs:
        raise UserInputError("name at least one input: an image, a video, a directory or a glob")
    found: list[PredictInput] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if p.is_file() and _kind(p) is not None)
            if not entries:
                raise UserInputError(f"{path} holds no images or videos")
            found.extend(PredictInput(p, _kind(p) or "") for p in entries)
        elif path.is_file():
            kind = _kind(path)
            if kind is None:
                raise UserInputError(
                    f"{path}: unknown input type {path.suffix!r}; images: {', '.join(sorted(IMAGE_SUFFIXES))}; "
                    f"videos: {', '.join(sorted(VIDEO_SUFFIXES))}"
                )
            found.append(PredictInput(path, kind))
        else:
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files = [p for p in matches if p.is_file() and _kind(p) is not None]
            if not files:
                raise UserInputError(f"{text} does not exist and matches no image or video")
            found.extend(PredictInput(p, _kind(p) or "") for p in files)
    seen: dict[str, Path] = {}
    for item in found:
        if item.stem in seen and seen[item.stem] != item.path:
            raise UserInputError(
                f"{seen[item.stem]} and {item.path} share the stem {item.stem!r}: their outputs would collide"
            )
        seen[item.stem] = item.path
    unique = {item.path: item for item in found}  # a file named twice runs once
    return list(unique.values())


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def frame_count(item: PredictInput) -> int:
    """Images count 1; a video its frame count as the container states it (for progress only)."""
    if item.kind == "image":
        return 1
    cv2 = opencv()
    capture = cv2.VideoCapture(os.fspath(item.path))
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
    finally:
        capture.release()


# --------------------------------------------------------------------------- the run
class Predictor:
    """Runs one candidate over inputs and writes the outputs; one per process or cluster worker."""

    def __init__(self, spec: CandidateSpec, options: PredictOptions, threads: int | None = None) -> None:
        from segdeploy.candidates import Segmenter

        self.options = options
        self.segmenter = Segmenter(spec, threads)
        self._bgr = np.array([c[::-1] for c in options.colors], dtype=np.uint8)
        self._palette = [v for color in options.colors[:256] for v in color]

    def __enter__(self) -> Predictor:
        self.segmenter.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.segmenter.__exit__(*exc)

    def run(self, items: Sequence[PredictInput], progress: Progress | None = None) -> PredictSummary:
        """Predict every input, images streamed through a decode-ahead queue, videos frame by frame.

        Raises:
            UserInputError: an undecodable image or video, or an output that cannot be written.
        """
        summary = PredictSummary()
        self.options.out_dir.mkdir(parents=True, exist_ok=True)
        images = [item for item in items if item.kind == "image"]
        # decoding, the model and encoding overlap: a thread each for the first two (see segdeploy.streams)
        decoded = prefetch(images, lambda it: (it, read_image(it.path)))
        for item, frame, outputs in prefetch(decoded, self._infer, depth=2):
            classmap = self.segmenter.classmaps(outputs, [frame])[0]
            summary.files.extend(self._write_image(item.stem, frame, classmap))
            summary.images += 1
            if progress:
                progress(1, item.path.name)
        for item in items:
            if item.kind == "video":
                self._video(item, summary, progress)
        return summary

    def _infer(self, decoded: tuple[PredictInput, np.ndarray]) -> tuple[PredictInput, np.ndarray, Any]:
        item, frame = decoded
        return item, frame, self.segmenter.infer([frame])

    # ------------------------------------------------------------------ images
    def _write_image(self, stem: str, frame: np.ndarray, classmap: np.ndarray) -> list[str]:
        out = self.options.out_dir
        written = [str(write_bytes_atomic(out / f"{stem}.png", self.encode_classmap(classmap)))]
        if self.options.overlay:
            jpeg = _encode(".jpg", self.overlay(frame, classmap), [opencv().IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            written.append(str(write_bytes_atomic(out / f"{stem}_overlay.jpg", jpeg)))
        return written

    def encode_classmap(self, classmap: np.ndarray) -> bytes:
        """A PNG whose pixel values are the class indices: a palette PNG up to 256 classes, else 16-bit grey."""
        from segdeploy.pixels import pillow

        image_module = pillow()
        buffer = io.BytesIO()
        if len(self.options.colors) <= 256:
            image = image_module.fromarray(classmap.astype(np.uint8), mode="P")
            image.putpalette(self._palette)
        else:
            image = image_module.fromarray(classmap.astype(np.uint16))
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESSION)
        return buffer.getvalue()

    def overlay(self, frame: np.ndarray, classmap: np.ndarray) -> np.ndarray:
        """The class colors blended over the frame (BGR), ``alpha`` the colors' weight."""
        colors = self._bgr[classmap]
        alpha = float(self.options.alpha)
        return opencv().addWeighted(frame, 1.0 - alpha, colors, alpha, 0.0)

    # ------------------------------------------------------------------ videos
    def _video(self, item: PredictInput, summary: PredictSummary, progress: Progress | None) -> None:
        cv2 = opencv()
        capture = cv2.VideoCapture(os.fspath(item.path))
        if not capture.isOpened():
            capture.release()
            raise UserInputError(f"cannot open video {item.path}: not a video OpenCV reads, or truncated")
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS
        frames_dir = self.options.out_dir / item.stem
        frames_dir.mkdir(exist_ok=True)
        target = self.options.out_dir / f"{item.stem}_overlay.mp4"
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.mp4")
        writer = None
        count = 0
        try:
            decoded = prefetch(_frames(capture), lambda frame: (item, frame))
            for _, frame, outputs in prefetch(decoded, self._infer, depth=2):
                classmap = self.segmenter.classmaps(outputs, [frame])[0]
                png = frames_dir / f"{count:06d}.png"
                summary.files.append(str(write_bytes_atomic(png, self.encode_classmap(classmap))))
                if self.options.overlay:
                    if writer is None:
                        writer = _video_writer(tmp, fps, frame.shape[1], frame.shape[0])
                    writer.write(self.overlay(frame, classmap))
                count += 1
                if progress:
                    progress(1, f"{item.path.name} frame {count}")
            if count == 0:
                raise UserInputError(f"video {item.path} holds no frames OpenCV can decode")
            if writer is not None:
                writer.release()
                writer = None
                os.replace(tmp, target)
                summary.files.append(str(target))
        finally:
            capture.release()
            if writer is not None:
                writer.release()
            tmp.unlink(missing_ok=True)
        summary.videos += 1
        summary.frames += count


def _frames(capture: Any) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def _video_writer(path: Path, fps: float, width: int, height: int) -> Any:
    cv2 = opencv()
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, (width, height))
    if not writer.isOpened():
        writer.release()
        raise UserInputError(f"OpenCV cannot write {VIDEO_FOURCC} video to {path.parent} (no encoder for it here)")
    return writer


def _encode(ext: str, image: np.ndarray, params: list[int]) -> bytes:
    ok, data = opencv().imencode(ext, image, params)
    if not ok:
        raise UserInputError(f"OpenCV could not encode a {ext} image")
    return data.tobytes()


# --------------------------------------------------------------------------- the library entry point
def class_colors(
    spec: CandidateSpec, palette_file: Path | None = None
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and colors: a palette file's, else the bundle's, else ``class_i`` and the VOC color map.

    Raises:
        UserInputError: a palette file with fewer colors than the model has classes.
    """
    from segdeploy.bundle.layout import default_labels, palette

    count = spec.num_classes
    if palette_file is not None:
        from segdeploy.pixels import read_palette_file

        names, colors = read_palette_file(palette_file)
        if len(colors) < count:
            raise UserInputError(f"{palette_file} lists {len(colors)} colors but the model has {count} classes")
        labels = tuple(n or f"class_{i}" for i, n in enumerate(names[:count]))
        return labels, tuple(colors[:count])
    labels = spec.labels if spec.labels and len(spec.labels) >= count else tuple(default_labels(count))
    colors = spec.colors if spec.colors and len(spec.colors) >= count else palette(count)
    return tuple(labels[:count]), tuple(tuple(int(v) for v in c) for c in colors[:count])  # type: ignore[misc]


def predict(
    model: str,
    inputs: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    runtime: str | None = None,
    alpha: float = 0.5,
    overlay: bool = True,
    palette_file: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    ray: RayOptions | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> PredictSummary:
    """Predict class maps for images and videos and write them to ``out_dir``.

    Args:
        model: an ONNX file, a TensorRT plan or a bundle directory.
        inputs: images, videos, directories or globs.
        out_dir: the output directory (created when missing).
        runtime: ``ort``, ``trt`` (a bundle's plan) or ``torch`` (the rebuilt PyTorch model).
        alpha: overlay color weight in [0, 1].
        overlay: also write the overlays.
        palette_file: class colors (``name,r,g,b`` CSV or ``R G B name`` lines).
        threads: CPU threads for the runner.
        ray: run on a Ray cluster (``segdeploy.distributed``); workers write the same files.
        progress: ``progress(done, total, what)`` after each frame.

    Raises:
        UserInputError: bad model, inputs, alpha or output directory.
    """
    from segdeploy.candidates import resolve_candidates

    if not 0.0 <= alpha <= 1.0:
        raise UserInputError(f"--alpha must be within 0..1, got {alpha}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"-o {out} is a file: predict writes a directory of outputs")
    (spec,) = resolve_candidates([model], runtime=runtime)
    items = expand_inputs(inputs)
    _, colors = class_colors(spec, Path(palette_file) if palette_file else None)
    options = PredictOptions(out, colors, alpha, overlay)
    total = sum(frame_count(item) for item in items)
    done = 0

    def step(count: int, what: str) -> None:
        nonlocal done
        done += count
        if progress:
            progress(done, max(total, done), what)

    if ray is not None:
        from functools import partial as bind

        from segdeploy.artifact import Runtime
        from segdeploy.distributed import run_on_ray

        summary = PredictSummary()
        factory = bind(Predictor, spec, options, ray.threads)
        video = lambda item: item.kind == "video"
        for count, part in run_on_ray(factory, items, ray, needs_gpu=spec.runtime is Runtime.TRT, whole=video):
            summary.merge(part)
            step(count, f"{summary.images} images, {summary.videos} videos")
        summary.files.sort()
        return summary
    with Predictor(spec, options, threads) as predictor:
        return predictor.run(items, step)
