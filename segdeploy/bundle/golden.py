"""The golden pair: frames, the model input the frame pipeline makes of them, and ONNX Runtime's output.

The frames (``golden/frames.npy``, N x H x W x C uint8, RGB or grey) are a smooth noisy image at a
size the model takes, so no resizing is involved; the input is ``FramePipeline.to_input`` of them
(the manifest's ``pipeline``), and the output ONNX Runtime's output for that input.
"""

from __future__ import annotations

import numpy as np

from segdeploy.artifact import Metadata, OutputKind
from segdeploy.frames import FramePipeline

GOLDEN_MAX_SIDE = 128
"""The golden frames' dynamic sides are the traced ones, capped here: a golden pair stays small."""

FLOAT_GOLDEN_RTOL, FLOAT_GOLDEN_ATOL = 1e-4, 1e-6
"""A float output reproduces its golden when ``max|a - b| <= RTOL * max|b| + ATOL``."""
CLASSMAP_GOLDEN_MAX_DIFFERING = 0.001
"""A class map reproduces its golden when at most this fraction of pixels differ (near-ties between builds)."""


def golden_shape(metadata: Metadata) -> tuple[int, int, int, int]:
    """The NCHW shape of the golden input: the traced one, dynamic sides capped at ``GOLDEN_MAX_SIDE``."""
    n, c, h, w = metadata.trace_shape  # type: ignore[misc]
    top = metadata.max_size if metadata.max_size is not None else GOLDEN_MAX_SIDE

    def side(traced: int, axis: str) -> int:
        limit = min(GOLDEN_MAX_SIDE, top)
        if axis not in metadata.dynamic_axes or traced <= limit:
            return traced
        m = max(metadata.size_multiple, 1)
        return max(limit // m * m, -(-metadata.min_size // m) * m)

    return n, c, side(h, "height"), side(w, "width")


def golden_frames(metadata: Metadata, seed: int = 0) -> np.ndarray:
    """N x H x W x C uint8 frames (RGB for 3 channels, grey for 1) at the golden size."""
    n, c, h, w = golden_shape(metadata)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    slopes = rng.uniform(-90, 90, (2, n, 1, 1, c))
    base = rng.uniform(40, 215, (n, 1, 1, c)) + slopes[0] * yy[None, :, :, None] + slopes[1] * xx[None, :, :, None]
    return np.clip(base + rng.normal(0, 20, (n, h, w, c)), 0, 255).round().astype(np.uint8)


def golden_input(pipeline: FramePipeline, frames: np.ndarray) -> np.ndarray:
    """The model input the frame pipeline makes of the golden frames."""
    return pipeline.to_input(list(frames), frame_color="rgb")


def compare_golden(output: np.ndarray, golden: np.ndarray, kind: OutputKind) -> str | None:
    """None when ``output`` reproduces ``golden`` by the bundle's rule, else what differs."""
    if output.shape != golden.shape:
        return f"shape {tuple(output.shape)} instead of the golden {tuple(golden.shape)}"
    if output.dtype != golden.dtype:
        return f"dtype {output.dtype} instead of the golden {golden.dtype}"
    if kind is OutputKind.CLASSMAP:
        differing = int(np.count_nonzero(output != golden))
        if differing > CLASSMAP_GOLDEN_MAX_DIFFERING * golden.size:
            return f"{differing} of {golden.size} class-map pixels differ (at most {CLASSMAP_GOLDEN_MAX_DIFFERING:.1%})"
        return None
    a, b = output.astype(np.float64), golden.astype(np.float64)
    error = float(np.max(np.abs(a - b))) if a.size else 0.0
    limit = FLOAT_GOLDEN_RTOL * (float(np.max(np.abs(b))) if b.size else 0.0) + FLOAT_GOLDEN_ATOL
    if not error <= limit:  # NaN fails too
        return f"max|out - golden| = {error:.3g} > limit {limit:.3g}"
    return None
