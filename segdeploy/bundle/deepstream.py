"""DeepStream Gst-nvinfer configuration for semantic segmentation (``network-type=2``).

What nvinfer does with a segmentation model, and so which files it can run:

- It prepares the input itself: scales the frame to ``infer-dims``, converts it to ``model-color-format``
  and writes float32 ``net-scale-factor * (pixel - offsets[c])`` into the input tensor. One scale serves
  all channels, and the tensor is float: a model taking raw uint8 frames, or normalizing with a
  different std per channel, would be fed wrong values without any error.
- Its built-in parser reads the first output as float scores per class and gives each pixel the class
  whose score is largest *and* above ``segmentation-threshold`` (>= 0), else -1. Probabilities fit;
  logits (negative where the model is unsure) leave pixels at -1; an int32 class map needs a custom parser.

So the config is written only for a float32 model with probabilities and one std for all channels.
For any other model :func:`fit` says why, and the bundle has no ``deepstream/`` directory rather than a
config that runs and silently gives wrong masks (a warning line at the top of a config is lost as soon
as its keys are copied into a pipeline's own file).

The file is a GLib key file: ``[group]`` lines, ``key=value`` lines, and comments only on whole lines
starting with ``#`` (GLib keeps ``# ...`` after a value as part of the value).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from segdeploy.bundle.manifest import DEEPSTREAM_CONFIG, LABELS, MODEL

GROUP = "property"
NETWORK_TYPE_SEGMENTATION = 2
NETWORK_MODES = {"fp32": 0, "int8": 1, "int8-fp16": 1, "fp16": 2}
COLOR_FORMATS = {"rgb": 0, "bgr": 1, "gray": 2}
MAX_BATCH = 1024  # nvinfer's NVDSINFER_MAX_BATCH_SIZE
MAX_OFFSETS = 4

_INT_KEYS = {
    "gpu-id",
    "gie-unique-id",
    "process-mode",
    "batch-size",
    "network-mode",
    "model-color-format",
    "network-type",
    "num-detected-classes",
    "network-input-order",
    "segmentation-output-order",
    "interval",
    "maintain-aspect-ratio",
    "symmetric-padding",
    "output-tensor-meta",
    "workspace-size",
    "scaling-filter",
    "scaling-compute-hw",
    "cluster-mode",
}
_FLOAT_KEYS = {"net-scale-factor", "segmentation-threshold"}
_PATH_KEYS = {"onnx-file", "model-engine-file", "labelfile-path", "int8-calib-file", "custom-lib-path", "mean-file"}
_LIST_KEYS = {"infer-dims", "offsets", "output-blob-names"}
KNOWN_KEYS = (
    _INT_KEYS
    | _FLOAT_KEYS
    | _PATH_KEYS
    | _LIST_KEYS
    | {"parse-segmentation-func-name", "layer-device-precision", "output-io-formats"}
)
"""The Gst-nvinfer ``[property]`` keys a semantic-segmentation config may use."""


def fit(manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Whether nvinfer's own pre-processing and parser run this model correctly.

    Returns:
        ``(reasons, notes)``: why the config cannot be written (empty: it can), and what a user of the
        written config must know.
    """
    reasons, notes = [], []
    spec, output = manifest["input"], manifest["output"]
    channels = _channels(spec)
    if spec["dtype"] != "float32":
        reasons.append(
            "the model takes raw uint8 frames and nvinfer feeds a float32 tensor it normalizes itself "
            "(export with --input-format float32-nchw)"
        )
    elif spec["layout"] != "NCHW":
        reasons.append("nvinfer feeds a float32 input in NCHW")
    if output["kind"] == "logits":
        reasons.append(
            "nvinfer's segmentation parser needs probabilities: it leaves a pixel unclassified (-1) "
            "unless a class score exceeds segmentation-threshold >= 0, and logits are negative where the "
            "model is unsure (export with --output-kind probs)"
        )
    elif output["kind"] == "classmap":
        reasons.append(
            "nvinfer's segmentation parser reads float scores per class, not an int32 class map "
            "(that needs a custom parser library; export with --output-kind probs)"
        )
    std = [float(s) for s in spec.get("std") or []]
    if spec["dtype"] == "float32" and std and max(std) - min(std) > 1e-6 * max(std):
        reasons.append(
            f"nvinfer normalizes with one scale for all channels and this model's std differs per "
            f"channel ({', '.join(f'{s:g}' for s in std)}); approximating it shifts every input "
            f"(export with one --std value for all channels)"
        )
    if channels not in (1, 3):
        reasons.append(f"nvinfer feeds 1 (gray) or 3 (RGB/BGR) channels, the model takes {channels}")
    if manifest.get("precision", "fp32").startswith("int8") and not manifest.get("engine"):
        reasons.append(
            "nvinfer cannot build an engine from a Q/DQ INT8 ONNX by itself (its INT8 mode wants a "
            "calibration table): bundle a built engine with --engine"
        )
    if not reasons and manifest["num_classes"] == 1:
        notes.append(
            "one class: nvinfer marks a pixel 0 where the probability exceeds 0.5 "
            "(segmentation-threshold) and -1 elsewhere"
        )
    return reasons, notes


def config_text(manifest: dict[str, Any], name: str) -> str:
    """The ``[property]`` group for a model :func:`fit` accepts; paths relative to ``deepstream/``."""
    spec, output = manifest["input"], manifest["output"]
    channels = _channels(spec)
    c, h, w = _infer_dims(spec)
    mean = [float(m) for m in spec["mean"]]
    std = float(spec["std"][0])
    lines = [
        f"# {name}: Gst-nvinfer semantic segmentation, written by segdeploy bundle; paths are relative to this file",
        f"[{GROUP}]",
        "gpu-id=0",
        "gie-unique-id=1",
        "process-mode=1",
        f"network-type={NETWORK_TYPE_SEGMENTATION}",
        f"onnx-file={_up(MODEL)}",
    ]
    if manifest.get("engine"):
        lines.append(f"model-engine-file={_up(manifest['engine']['file'])}")
    lines += [
        f"labelfile-path={_up(LABELS)}",
        f"batch-size={_batch_size(spec)}",
        f"infer-dims={c};{h};{w}",
        "network-input-order=0",
        f"network-mode={NETWORK_MODES.get(manifest.get('precision', 'fp32'), 0)}",
        f"model-color-format={COLOR_FORMATS['gray'] if channels == 1 else COLOR_FORMATS[spec['color']]}",
        f"net-scale-factor={_number(1.0 / (255.0 * std))}",
        "offsets=" + ";".join(_number(255.0 * m) for m in mean),
        f"num-detected-classes={manifest['num_classes']}",
        f"output-blob-names={output['name']}",
        f"segmentation-threshold={_number(threshold(manifest))}",
        "segmentation-output-order=0",
    ]
    return "\n".join(lines) + "\n"


def threshold(manifest: dict[str, Any]) -> float:
    """0 for softmax probabilities (every pixel gets its argmax); 0.5 for one sigmoid class."""
    return 0.5 if manifest["num_classes"] == 1 else 0.0


def parse_key_file(text: str) -> dict[str, dict[str, str]]:
    """A GLib key file, strictly: groups, ``key=value`` lines, whole-line ``#`` comments, blank lines.

    Raises:
        ValueError: a line GLib would reject or read differently (naming the line).
    """
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3 or any(ch in line[1:-1] for ch in "[]"):
                raise ValueError(f"line {number}: bad group header {raw.strip()!r}")
            group = line[1:-1]
            if group in groups:
                raise ValueError(f"line {number}: group [{group}] appears twice")
            current = groups[group] = {}
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"line {number}: expected key=value, got {raw.strip()!r}")
        if current is None:
            raise ValueError(f"line {number}: key {key!r} before any [group]")
        if "#" in value:
            raise ValueError(
                f"line {number}: {key} has an inline comment ({value!r}); GLib would read it as part of the value"
            )
        if key in current:
            raise ValueError(f"line {number}: key {key!r} appears twice")
        current[key] = value
    return groups


def check_config(text: str, manifest: dict[str, Any], output_names: list[str], bundle_files: set[str]) -> list[str]:
    """Problems of a Gst-nvinfer config against the bundle (empty: none).

    Args:
        text: the config file's text.
        manifest: the bundle's manifest.
        output_names: the ONNX graph's output names.
        bundle_files: the bundle's files, relative paths with '/'.
    """
    where = DEEPSTREAM_CONFIG
    try:
        groups = parse_key_file(text)
    except ValueError as exc:
        return [f"{where} is not a valid GLib key file: {exc}"]
    if GROUP not in groups:
        return [f"{where} has no [{GROUP}] group"]
    props = groups[GROUP]
    problems: list[str] = []

    def bad(message: str) -> None:
        problems.append(f"{where}: {message}")

    unknown = sorted(set(props) - KNOWN_KEYS)
    if unknown:
        bad(f"unknown Gst-nvinfer key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, value in props.items():
        try:
            if key in _INT_KEYS:
                values[key] = int(value)
            elif key in _FLOAT_KEYS:
                values[key] = float(value)
            elif key in ("infer-dims",):
                values[key] = [int(v) for v in _list(value)]
            elif key == "offsets":
                values[key] = [float(v) for v in _list(value)]
            elif key == "output-blob-names":
                values[key] = _list(value)
            else:
                values[key] = value
        except ValueError:
            bad(f"{key}={value!r} is not {'a list of numbers' if key in _LIST_KEYS else 'a number'}")
    if problems:
        return problems

    spec, output = manifest["input"], manifest["output"]
    channels = _channels(spec)
    for key in (
        "network-type",
        "onnx-file",
        "infer-dims",
        "batch-size",
        "network-mode",
        "model-color-format",
        "net-scale-factor",
        "offsets",
        "num-detected-classes",
        "output-blob-names",
        "segmentation-threshold",
        "segmentation-output-order",
    ):
        if key not in values:
            bad(f"{key} is missing")
    if problems:
        return problems

    if values["network-type"] != NETWORK_TYPE_SEGMENTATION:
        bad(f"network-type={values['network-type']}, expected {NETWORK_TYPE_SEGMENTATION} (semantic segmentation)")
    expected_mode = NETWORK_MODES.get(manifest.get("precision", "fp32"), 0)
    if values["network-mode"] not in (0, 1, 2):
        bad(f"network-mode={values['network-mode']} is not 0 (FP32), 1 (INT8) or 2 (FP16)")
    elif values["network-mode"] != expected_mode:
        bad(f"network-mode={values['network-mode']} but the model is {manifest.get('precision')} ({expected_mode})")
    color = values["model-color-format"]
    expected_color = COLOR_FORMATS["gray"] if channels == 1 else COLOR_FORMATS.get(spec["color"])
    if color not in COLOR_FORMATS.values():
        bad(f"model-color-format={color} is not 0 (RGB), 1 (BGR) or 2 (GRAY)")
    elif color != expected_color:
        bad(
            f"model-color-format={color} but the model takes {'gray' if channels == 1 else spec['color']} "
            f"({expected_color})"
        )
    if not 1 <= values["batch-size"] <= MAX_BATCH:
        bad(f"batch-size={values['batch-size']} is outside 1..{MAX_BATCH}")
    elif "batch" not in spec["dynamic_axes"] and values["batch-size"] != spec["shape"][0]:
        bad(f"batch-size={values['batch-size']} but the model's batch is fixed at {spec['shape'][0]}")
    if values.get("network-input-order", 0) not in (0, 1):
        bad(f"network-input-order={values['network-input-order']} is not 0 (NCHW) or 1 (NHWC)")
    elif values.get("network-input-order", 0) != (1 if spec["layout"] == "NHWC" else 0):
        bad(f"network-input-order={values.get('network-input-order', 0)} but the input is {spec['layout']}")
    if values["segmentation-output-order"] not in (0, 1):
        bad(f"segmentation-output-order={values['segmentation-output-order']} is not 0 (NCHW) or 1 (NHWC)")
    elif values["segmentation-output-order"] != 0:
        bad("segmentation-output-order=1 (NHWC) but the output is NCHW")
    cut = values["segmentation-threshold"]
    if manifest["num_classes"] == 1 and not 0 < cut < 1:
        bad(
            f"segmentation-threshold={cut:g}: with one class nvinfer marks every pixel whose probability exceeds "
            "it, so it must lie strictly between 0 and 1"
        )
    elif not 0 <= cut < 1:
        bad(
            f"segmentation-threshold={cut:g} is outside [0, 1): "
            + ("nvinfer rejects negative values" if cut < 0 else "no probability would exceed it")
        )
    if values["num-detected-classes"] != manifest["num_classes"]:
        bad(
            f"num-detected-classes={values['num-detected-classes']} but the model has {manifest['num_classes']} classes"
        )
    _check_dims(values["infer-dims"], spec, channels, bad)
    _check_normalization(values["net-scale-factor"], values["offsets"], spec, bad)
    missing = [n for n in values["output-blob-names"] if n not in output_names]
    if missing or not values["output-blob-names"]:
        bad(f"output-blob-names {values['output-blob-names']} are not model outputs ({', '.join(output_names)})")
    elif values["output-blob-names"][0] != output["name"]:
        bad(
            f"output-blob-names starts with {values['output-blob-names'][0]!r}, the parser reads the first: "
            f"expected {output['name']!r}"
        )
    for key in sorted(set(values) & _PATH_KEYS):
        target = _resolve(values[key])
        if target is None or target not in bundle_files:
            bad(f"{key}={values[key]} does not name a file of the bundle")
    if _resolve(values["onnx-file"]) not in (None, MODEL):
        bad(f"onnx-file={values['onnx-file']} is not the bundle's {MODEL}")
    engine = manifest.get("engine")
    if "model-engine-file" in values and (not engine or _resolve(values["model-engine-file"]) != engine["file"]):
        bad(f"model-engine-file={values['model-engine-file']} is not the bundle's engine")
    return problems


def _check_dims(dims: list[int], spec: dict[str, Any], channels: int, bad: Any) -> None:
    if len(dims) != 3:
        bad(f"infer-dims has {len(dims)} values, expected 3 (c;h;w)")
        return
    c, h, w = dims
    if c != channels:
        bad(f"infer-dims channels {c}, the model takes {channels}")
    shape = dict(zip(spec["layout"], spec["shape"]))
    for axis, side, letter in (("height", h, "H"), ("width", w, "W")):
        if axis not in spec["dynamic_axes"]:
            if side != shape[letter]:
                bad(f"infer-dims {axis} {side}, the model's is fixed at {shape[letter]}")
        elif side < spec["min_size"] or side % spec["size_multiple"]:
            bad(
                f"infer-dims {axis} {side} is not a size the model takes (multiples of {spec['size_multiple']}, "
                f">= {spec['min_size']})"
            )


def _check_normalization(scale: float, offsets: list[float], spec: dict[str, Any], bad: Any) -> None:
    """nvinfer computes ``scale * (pixel - offsets[c])``: it must equal ``(pixel / 255 - mean[c]) / std[c]``."""
    std, mean = [float(s) for s in spec["std"]], [float(m) for m in spec["mean"]]
    if len(offsets) > MAX_OFFSETS or len(offsets) != len(mean):
        bad(f"offsets has {len(offsets)} values for {len(mean)} channels")
        return
    for c, (s, m, o) in enumerate(zip(std, mean, offsets)):
        if abs(scale * 255.0 * s - 1.0) > 1e-6:
            bad(f"net-scale-factor {scale:g} does not divide channel {c} by its std ({s:g} x 255)")
            return
        if abs(o - 255.0 * m) > 1e-6 * 255.0:
            bad(f"offsets[{c}]={o:g}, the model's mean is {m:g} (x 255 = {255.0 * m:g})")
            return


def _channels(spec: dict[str, Any]) -> int:
    return int(spec["shape"][spec["layout"].index("C")])


def _infer_dims(spec: dict[str, Any]) -> tuple[int, int, int]:
    """c, h, w: the engine profile's opt size when there is one, else the traced size."""
    shape = spec["tensorrt_profile"]["opt"] if spec.get("tensorrt_profile") else spec["shape"]
    dims = dict(zip(spec["layout"], shape))
    return int(dims["C"]), int(dims["H"]), int(dims["W"])


def _batch_size(spec: dict[str, Any]) -> int:
    if "batch" not in spec["dynamic_axes"]:
        return int(spec["shape"][0])
    profile = spec.get("tensorrt_profile")
    return min(int(profile["max"][0]), MAX_BATCH) if profile else 1


def _up(path: str) -> str:
    return f"../{path}"


def _resolve(value: str) -> str | None:
    """A config path (relative to ``deepstream/``) as a bundle path, or None when it leaves the bundle."""
    if value.startswith("/"):
        return None
    parts: list[str] = list(PurePosixPath(DEEPSTREAM_CONFIG).parent.parts)
    for part in PurePosixPath(value).parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def _list(value: str) -> list[str]:
    """A GLib list: ``;``-separated, a trailing ``;`` allowed."""
    items = value.split(";")
    if items and items[-1] == "":
        items.pop()
    return [item.strip() for item in items]


def _number(value: float) -> str:
    return f"{value:.10g}"
