"""Send an image to the bundle's model on a Triton server and write the colored mask.

This file is copied into every bundle as ``client.py``; it needs no segdeploy, only
``pip install 'tritonclient[http]' numpy opencv-python-headless``:

    python client.py frame.png -o mask.png [--url localhost:8000] [--model NAME]

It follows the manifest beside it (``segdeploy.json``): the ``pipeline`` turns the frame into the model's
input (color order, resize to a size the model takes, normalization, layout) and the output into a class
map at the frame's size, colored with the manifest's ``palette``. Exit codes: 0 written, 1 the server
failed or refused, 2 bad input (image, arguments, manifest).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

DATATYPES = {"uint8": "UINT8", "float32": "FP32", "int32": "INT32"}


class ClientError(Exception):
    """A problem said in one line, with an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run_size(pipeline: dict[str, Any], height: int, width: int) -> tuple[int, int]:
    """The size a frame runs at: the fixed size, or each side rounded to the nearest valid size (halves up)."""
    resize = pipeline["resize"]
    if resize["fixed_size"]:
        return int(resize["fixed_size"][0]), int(resize["fixed_size"][1])
    m, low, high = int(resize["size_multiple"]), int(resize["min_size"]), resize["max_size"]
    first = -(-low // m) * m
    last = None if high is None else int(high) // m * m

    def nearest(side: int) -> int:
        rounded = max((side + m // 2) // m * m, first)
        return rounded if last is None else min(rounded, last)

    return nearest(height), nearest(width)


def prepare(pipeline: dict[str, Any], frame_bgr: np.ndarray) -> np.ndarray:
    """The model input (batch of one, or the fixed batch) for an 8-bit BGR frame as OpenCV decodes it."""
    import cv2

    channels = int(pipeline["color_conversion"]["channels"])
    if channels == 1:
        image = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif pipeline["color_conversion"]["color"] == "rgb":
        image = frame_bgr[:, :, ::-1]
    else:
        image = frame_bgr
    height, width = run_size(pipeline, *image.shape[:2])
    if image.shape[:2] != (height, width):
        image = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)
        image = image if image.ndim == 3 else image[:, :, None]
    norm, tensor = pipeline["normalize"], pipeline["tensor"]
    batch = image[None]
    if not norm["in_graph"]:
        mean = np.asarray(norm["mean"], np.float32)
        std = np.asarray(norm["std"], np.float32)
        batch = (batch.astype(np.float32) / np.float32(255) - mean) / std
    if tensor["layout"] == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    if tensor["fixed_batch"]:
        batch = np.repeat(batch, int(tensor["fixed_batch"]), axis=0)
    return np.ascontiguousarray(batch, dtype=np.uint8 if tensor["dtype"] == "uint8" else np.float32)


def to_classmap(pipeline: dict[str, Any], output: np.ndarray) -> np.ndarray:
    """The first image's H x W class map."""
    out = pipeline["output"]
    if out["kind"] == "classmap":
        return output[0].reshape(output.shape[-2:]).astype(np.int32)
    if output.shape[1] == 1:
        return (output[0, 0] > out["single_channel_threshold"]).astype(np.int32)
    return output[0].argmax(axis=0).astype(np.int32)


def colorize(classmap: np.ndarray, palette: list[list[int]], frame_size: tuple[int, int]) -> np.ndarray:
    """The class map at the frame's size (nearest neighbour), as a BGR image in the palette's colors."""
    import cv2

    if classmap.shape != frame_size:
        classmap = cv2.resize(classmap, (frame_size[1], frame_size[0]), interpolation=cv2.INTER_NEAREST)
    colors = np.asarray(palette, dtype=np.uint8)
    return colors[np.clip(classmap, 0, len(colors) - 1)][:, :, ::-1]


def infer(url: str, model: str, manifest: dict[str, Any], batch: np.ndarray) -> np.ndarray:
    """One request over HTTP (KServe v2 protocol, binary tensor data)."""
    try:
        import tritonclient.http as http
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        raise ClientError(f"{exc}: pip install 'tritonclient[http]'", 2) from None
    spec, out = manifest["input"], manifest["output"]
    try:
        client = http.InferenceServerClient(url=url)
        if not client.is_model_ready(model):
            raise ClientError(f"model {model!r} is not ready on {url} (load it: --load-model={model})", 1)
        tensor = http.InferInput(spec["name"], list(batch.shape), DATATYPES[str(batch.dtype)])
        tensor.set_data_from_numpy(batch, binary_data=True)
        wanted = http.InferRequestedOutput(out["name"], binary_data=True)
        result = client.infer(model, [tensor], outputs=[wanted])
    except InferenceServerException as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClientError(f"Triton at {url}: {message}", 1) from None
    except OSError as exc:
        raise ClientError(f"cannot reach Triton at {url}: {exc}", 1) from None
    array = result.as_numpy(out["name"])
    if array is None:
        raise ClientError(f"Triton at {url} returned no output {out['name']!r}", 1)
    return array


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Segment an image with the bundle's model on a Triton server.")
    parser.add_argument("image", type=Path, help="image file (any format OpenCV reads)")
    parser.add_argument("-o", "--output", type=Path, default=Path("mask.png"), help="colored mask to write")
    parser.add_argument("--url", default="localhost:8000", help="Triton's HTTP endpoint")
    parser.add_argument("--model", help="Triton model name (default: the bundle's)")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent, help="the bundle directory")
    args = parser.parse_args(argv)
    try:
        try:
            import cv2
        except ImportError:
            raise ClientError("this client needs OpenCV: pip install opencv-python-headless", 2) from None
        try:
            manifest = json.loads((args.bundle / "segdeploy.json").read_text(encoding="utf-8"))
            pipeline = manifest["pipeline"]
        except (OSError, ValueError, KeyError) as exc:
            raise ClientError(f"cannot read the bundle's segdeploy.json in {args.bundle}: {exc}", 2) from None
        try:
            data = np.frombuffer(args.image.read_bytes(), np.uint8)
        except OSError as exc:
            raise ClientError(f"cannot read image {args.image}: {exc.strerror or exc}", 2) from None
        frame = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None  # 8-bit BGR, as the C++ runtime reads
        if frame is None:
            raise ClientError(f"cannot decode image {args.image}", 2)
        batch = prepare(pipeline, frame)
        output = infer(args.url, args.model or manifest["name"], manifest, batch)
        mask = colorize(to_classmap(pipeline, output), manifest["palette"], frame.shape[:2])
        if not cv2.imwrite(str(args.output), mask):
            raise ClientError(f"cannot write {args.output}", 2)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    print(f"{args.output}: {mask.shape[1]}x{mask.shape[0]} mask")
    return 0


if __name__ == "__main__":
    sys.exit(main())
