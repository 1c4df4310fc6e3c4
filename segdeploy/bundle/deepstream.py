"""DeepStream Gst-nvinfer configuration for semantic segmentation (``network-type=2``), written and checked.

Every bundle has ``deepstream/config_infer_primary.txt``. In ``derived`` mode (the default) it runs
``deepstream/nvinfer.onnx`` (``segdeploy.bundle.nvinfer``): 0..255 pixels in, the model's own
normalization inside, per-class scores out, so ``net-scale-factor=1``, ``offsets=0`` and any input format,
mean/std or output kind give the model's class map. In ``direct`` mode (a bundled plan whose model nvinfer
can feed as it is: float32 NCHW, one std for all channels, probabilities of two or more classes) it runs
``model.onnx`` and ``model.plan`` with the model's normalization as ``net-scale-factor`` and ``offsets``.

``model-engine-file`` names the engine nvinfer uses: the bundled plan, or the file nvinfer writes beside
the ONNX when it builds one (``<onnx file>_b<batch>_gpu<id>_<fp32|fp16|int8>.engine``), so the first start
builds and later starts reuse it; ``--check`` tolerates that one generated file.

The file is a GLib key file: ``[group]`` lines, ``key=value`` lines, and comments only on whole lines
starting with ``#`` (GLib keeps ``# ...`` after a value as part of the value). Keys are those of
nvinfer's property parser in DeepStream 6.0 to 8.0.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from segdeploy.artifact import OutputKind, Precision
from segdeploy.bundle import nvinfer
from segdeploy.bundle.manifest import LABELS, MODEL, PLAN, BundleManifest, DeepStreamMode

GROUP = "property"
NETWORK_TYPE_SEGMENTATION = 2
NETWORK_MODES = {Precision.FP32: 0, Precision.INT8: 1, Precision.INT8_FP16: 1, Precision.FP16: 2}
COLOR_FORMATS = {"rgb": 0, "bgr": 1, "gray": 2}
SCALING_FILTER_BILINEAR = 1  # NvBufSurfTransformInter_Bilinear: the frame pipeline resizes bilinearly
MAX_BATCH = 1024  # nvinfer's NVDSINFER_MAX_BATCH_SIZE
MAX_OFFSETS = 4

_INT_KEYS = {
    "gpu-id", "gie-unique-id", "process-mode", "interval", "secondary-reinfer-interval", "output-tensor-meta",
    "disable-output-host-copy", "enable-dla", "use-dla-core", "batch-size", "tensor-meta-pool-size",
    "network-mode", "workspace-size", "is-classifier", "network-type", "force-implicit-batch-dim",
    "model-color-format", "maintain-aspect-ratio", "symmetric-padding", "scaling-filter", "scaling-compute-hw",
    "network-input-order", "input-tensor-from-meta", "uff-input-order", "num-detected-classes", "enable-dbscan",
    "cluster-mode", "crop-objects-to-roi-boundary", "classifier-async-mode", "segmentation-output-order",
    "output-instance-mask", "input-object-min-width", "input-object-min-height", "input-object-max-width",
    "input-object-max-height", "operate-on-gie-id", "auto-inc-mem", "max-gpu-mem-per", "dump-input-tensor",
    "dump-output-tensor",
}  # fmt: skip
_FLOAT_KEYS = {"net-scale-factor", "segmentation-threshold", "classifier-threshold"}
_PATH_KEYS = {
    "onnx-file", "model-engine-file", "labelfile-path", "int8-calib-file", "custom-lib-path", "mean-file",
    "model-file", "proto-file", "uff-file", "tlt-encoded-model",
}  # fmt: skip
_LIST_KEYS = {"infer-dims", "offsets", "output-blob-names"}
_TEXT_KEYS = {
    "output-io-formats", "layer-device-precision", "parse-bbox-func-name", "parse-bbox-instance-mask-func-name",
    "engine-create-func-name", "parse-classifier-func-name", "custom-network-config", "input-dims",
    "uff-input-dims", "uff-input-blob-name", "tlt-model-key", "classifier-type", "operate-on-class-ids",
    "filter-out-class-ids",
}  # fmt: skip
KNOWN_KEYS = _INT_KEYS | _FLOAT_KEYS | _PATH_KEYS | _LIST_KEYS | _TEXT_KEYS
"""The ``[property]`` keys of nvinfer's property parser (DeepStream 6.0-6.2 sources; 6.4 and 8.0 add
``auto-inc-mem``, ``max-gpu-mem-per``, ``dump-input-tensor`` and ``dump-output-tensor``)."""

_CHANGES_THE_MODEL = {
    "custom-lib-path": "a custom library replaces nvinfer's own parser or engine",
    "engine-create-func-name": "a custom engine replaces the bundle's model",
    "mean-file": "a mean image replaces offsets",
    "model-file": "another model than the bundle's",
    "proto-file": "another model than the bundle's",
    "uff-file": "another model than the bundle's",
    "tlt-encoded-model": "another model than the bundle's",
}
_MUST_BE_ZERO = {
    "maintain-aspect-ratio": "the frame pipeline stretches frames to the network size, it does not pad",
    "input-tensor-from-meta": "nvinfer would skip its pre-processing and take tensors from upstream",
    "network-input-order": "the network takes NCHW",
    "segmentation-output-order": "the scores are NCHW",
}


# --------------------------------------------------------------------------- writing
def infer_dims(manifest: BundleManifest) -> tuple[int, int, int]:
    """c, h, w: the engine profile's opt size when there is one, else the traced size."""
    spec = manifest.input
    shape = spec.tensorrt_profile.opt if spec.tensorrt_profile else spec.shape
    dims = dict(zip(spec.layout, shape))
    return int(dims["C"]), int(dims["H"]), int(dims["W"])


def batch_size(manifest: BundleManifest) -> int:
    spec = manifest.input
    if not spec.dynamic("N"):
        return spec.axis("N")
    return min(spec.tensorrt_profile.max[0], MAX_BATCH) if spec.tensorrt_profile else 1


def direct_fit(manifest: BundleManifest) -> bool:
    """Whether nvinfer can feed the bundled plan as it is (so the config points at it)."""
    spec, std = manifest.input, manifest.input.std
    return (
        manifest.engine is not None
        and not spec.normalization_fused
        and spec.channels in (1, 3)
        and max(std) - min(std) <= 1e-6 * max(std)
        and manifest.output.kind is OutputKind.PROBS
        and manifest.num_classes >= 2
    )


def generated_engine(
    onnx_file: str, batch: int, mode: int, *, gpu: int = 0, dla: int | None = None, calib: bool = False
) -> str:
    """The engine file nvinfer writes beside ``onnx_file`` when it builds one (a path like ``onnx_file``).

    Without ``int8-calib-file`` nvinfer's INT8 mode falls back to FP16, and names the file so.
    """
    names = {0: "fp32", 1: "int8" if calib else "fp16", 2: "fp16"}
    device = f"dla{dla}" if dla is not None else f"gpu{gpu}"
    return f"{onnx_file}_b{batch}_{device}_{names.get(mode, 'fp32')}.engine"


def config_text(manifest: BundleManifest) -> str:
    """The ``[property]`` group; paths relative to ``deepstream/``."""
    c, h, w = infer_dims(manifest)
    batch, mode = batch_size(manifest), NETWORK_MODES[manifest.precision]
    direct = manifest.deepstream.mode is DeepStreamMode.DIRECT
    if direct:
        onnx_file, engine_file = _up(MODEL), _up(PLAN)
        std = manifest.input.std[0]
        scale, offsets = 1.0 / (255.0 * std), [255.0 * m for m in manifest.input.mean]
        blob, classes = manifest.output.name, manifest.num_classes
    else:
        onnx_file = PurePosixPath(manifest.deepstream.onnx or "").name
        engine_file = generated_engine(onnx_file, batch, mode)
        scale, offsets = 1.0, [0.0] * c
        blob, classes = nvinfer.SCORES, nvinfer.score_channels(manifest.num_classes)
    color = COLOR_FORMATS["gray"] if c == 1 else COLOR_FORMATS[manifest.input.color.value]
    lines = [
        f"# {manifest.name}: Gst-nvinfer semantic segmentation, written by segdeploy bundle; paths are relative "
        "to this file",
        f"[{GROUP}]",
        "gpu-id=0",
        "gie-unique-id=1",
        "process-mode=1",
        f"network-type={NETWORK_TYPE_SEGMENTATION}",
        f"onnx-file={onnx_file}",
        f"model-engine-file={engine_file}",
    ]
    if manifest.num_classes >= 2:
        lines.append(f"labelfile-path={_up(LABELS)}")
    lines += [
        f"batch-size={batch}",
        f"infer-dims={c};{h};{w}",
        "network-input-order=0",
        f"network-mode={mode}",
        f"model-color-format={color}",
        "maintain-aspect-ratio=0",
        f"scaling-filter={SCALING_FILTER_BILINEAR}",
        f"net-scale-factor={_number(scale)}",
        "offsets=" + ";".join(_number(o) for o in offsets),
        f"num-detected-classes={classes}",
        f"output-blob-names={blob}",
        f"segmentation-threshold={_number(0.5 / classes)}",
        "segmentation-output-order=0",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- reading
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


def read_config(text: str) -> tuple[dict[str, Any], list[str]]:
    """The ``[property]`` values, typed (ints, floats, lists), and the problems met reading them."""
    try:
        groups = parse_key_file(text)
    except ValueError as exc:
        return {}, [f"is not a valid GLib key file: {exc}"]
    if GROUP not in groups:
        return {}, [f"has no [{GROUP}] group"]
    props, values, problems = groups[GROUP], {}, []
    unknown = sorted(set(props) - KNOWN_KEYS)
    if unknown:
        problems.append(f"unknown Gst-nvinfer key(s) {', '.join(unknown)}")
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
            problems.append(f"{key}={value!r} is not {'a list of numbers' if key in _LIST_KEYS else 'a number'}")
    return values, problems


# --------------------------------------------------------------------------- checking
_REQUIRED = (
    "network-type", "onnx-file", "model-engine-file", "infer-dims", "batch-size", "network-mode",
    "model-color-format", "net-scale-factor", "offsets", "num-detected-classes", "output-blob-names",
    "segmentation-threshold",
)  # fmt: skip


def check_config(
    values: dict[str, Any], manifest: BundleManifest, output_names: list[str], bundle_files: set[str]
) -> list[str]:
    """Problems of a read config against the bundle (empty: none); the simulation is the caller's.

    Args:
        values: :func:`read_config`'s values.
        manifest: the bundle's manifest.
        output_names: the outputs of the ONNX the config must name (``onnx-file``'s).
        bundle_files: the bundle's files, relative paths with '/'.
    """
    problems: list[str] = [f"{key} is missing" for key in _REQUIRED if key not in values]
    if problems:
        return problems
    bad = problems.append
    spec, direct = manifest.input, manifest.deepstream.mode is DeepStreamMode.DIRECT
    channels = spec.channels
    classes = manifest.num_classes if direct else nvinfer.score_channels(manifest.num_classes)
    for key, why in _CHANGES_THE_MODEL.items():
        if key in values:
            bad(f"{key} is set: {why}")
    for key, why in _MUST_BE_ZERO.items():
        if values.get(key, 0) != 0:
            bad(f"{key}={values[key]}: must be 0 ({why})")
    if values["network-type"] != NETWORK_TYPE_SEGMENTATION:
        bad(f"network-type={values['network-type']}, expected {NETWORK_TYPE_SEGMENTATION} (semantic segmentation)")
    expected_mode = NETWORK_MODES[manifest.precision]
    if values["network-mode"] not in (0, 1, 2):
        bad(f"network-mode={values['network-mode']} is not 0 (FP32), 1 (INT8) or 2 (FP16)")
    elif values["network-mode"] != expected_mode:
        bad(f"network-mode={values['network-mode']} but the model is {manifest.precision.value} ({expected_mode})")
    color, name = values["model-color-format"], "gray" if channels == 1 else spec.color.value
    if color not in COLOR_FORMATS.values():
        bad(f"model-color-format={color} is not 0 (RGB), 1 (BGR) or 2 (GRAY)")
    elif color != COLOR_FORMATS[name]:
        bad(f"model-color-format={color} but the model takes {name} ({COLOR_FORMATS[name]})")
    batch = values["batch-size"]
    if not 1 <= batch <= MAX_BATCH:
        bad(f"batch-size={batch} is outside 1..{MAX_BATCH}")
    elif not spec.dynamic("N") and batch != spec.axis("N"):
        bad(f"batch-size={batch} but the model's batch is fixed at {spec.axis('N')}")
    elif direct and spec.tensorrt_profile and batch > spec.tensorrt_profile.max[0]:
        bad(f"batch-size={batch} exceeds the plan's largest batch {spec.tensorrt_profile.max[0]}")
    cut = values["segmentation-threshold"]
    if not 0 <= cut < 1.0 / classes:
        bad(
            f"segmentation-threshold={cut:g}: nvinfer gives a pixel its class only when the top score exceeds it; "
            f"with {classes} score channels it must lie in [0, {1.0 / classes:g}) (it rejects negative values)"
        )
    if values["num-detected-classes"] != classes:
        bad(f"num-detected-classes={values['num-detected-classes']} but the model has {classes} score channels")
    onnx_file = resolve(values["onnx-file"])
    expected_onnx = MODEL if direct else manifest.deepstream.onnx
    blobs = values["output-blob-names"]
    main = manifest.output.name if direct else nvinfer.SCORES
    if onnx_file != expected_onnx:
        bad(f"onnx-file={values['onnx-file']} is not the bundle's {expected_onnx}")
    elif not blobs or any(n not in output_names for n in blobs):
        bad(f"output-blob-names {blobs} are not outputs of its ONNX ({', '.join(output_names)})")
    elif blobs[0] != main:
        bad(f"output-blob-names starts with {blobs[0]!r}, the parser reads the first: expected {main!r}")
    _check_dims(values["infer-dims"], manifest, bad)
    _check_normalization(values["net-scale-factor"], values["offsets"], manifest, bad)
    engine = resolve(values["model-engine-file"])
    generated = expected_engine(values, manifest)
    allowed = {generated} | ({manifest.engine.file} if direct and manifest.engine else set())
    if engine not in allowed:
        bad(
            f"model-engine-file={values['model-engine-file']} is neither the bundle's plan nor the engine nvinfer "
            f"builds from {values['onnx-file']} ({PurePosixPath(generated or '').name})"
        )
    for key in sorted(set(values) & (_PATH_KEYS - {"model-engine-file"})):
        target = resolve(values[key])
        if target is None or target not in bundle_files:
            bad(f"{key}={values[key]} does not name a file of the bundle")
    return problems


def expected_engine(values: dict[str, Any], manifest: BundleManifest) -> str | None:
    """The bundle path of the engine nvinfer writes for this config (None when ``onnx-file`` leaves the bundle)."""
    onnx_file = resolve(str(values.get("onnx-file", "")))
    if onnx_file is None:
        return None
    dla = values.get("use-dla-core", 0) if values.get("enable-dla", 0) else None
    return generated_engine(
        onnx_file,
        int(values.get("batch-size", 1)),
        int(values.get("network-mode", 0)),
        gpu=int(values.get("gpu-id", 0)),
        dla=dla,
        calib="int8-calib-file" in values,
    )


def _check_dims(dims: list[int], manifest: BundleManifest, bad: Callable[[str], None]) -> None:
    spec = manifest.input
    if len(dims) != 3:
        bad(f"infer-dims has {len(dims)} values, expected 3 (c;h;w)")
        return
    c, h, w = dims
    if c != spec.channels:
        bad(f"infer-dims channels {c}, the model takes {spec.channels}")
    profile = spec.tensorrt_profile if manifest.deepstream.mode is DeepStreamMode.DIRECT else None
    for axis, side, letter in (("height", h, "H"), ("width", w, "W")):
        if not spec.dynamic(letter):
            if side != spec.axis(letter):
                bad(f"infer-dims {axis} {side}, the model's is fixed at {spec.axis(letter)}")
        elif not spec.valid_side(side):
            bad(
                f"infer-dims {axis} {side} is not a size the model takes (multiples of {spec.size_multiple}, "
                f">= {spec.min_size}" + (f", <= {spec.max_size})" if spec.max_size else ")")
            )
        elif profile is not None:
            index = spec.layout.index(letter)
            if not profile.min[index] <= side <= profile.max[index]:
                bad(
                    f"infer-dims {axis} {side} is outside the plan's profile {profile.min[index]}..{profile.max[index]}"
                )


def _check_normalization(
    scale: float, offsets: list[float], manifest: BundleManifest, bad: Callable[[str], None]
) -> None:
    """nvinfer computes ``scale * (pixel - offsets[c])``: it must be what the ONNX it runs expects."""
    spec = manifest.input
    if len(offsets) > MAX_OFFSETS or len(offsets) != spec.channels:
        bad(f"offsets has {len(offsets)} values for {spec.channels} channels")
        return
    if manifest.deepstream.mode is DeepStreamMode.DERIVED:
        if scale != 1.0 or any(o != 0.0 for o in offsets):
            bad(
                f"net-scale-factor={scale:g}, offsets={';'.join(f'{o:g}' for o in offsets)}: the DeepStream ONNX "
                "normalizes inside and takes 0..255 pixels (net-scale-factor=1, offsets=0)"
            )
        return
    for c, (s, m, o) in enumerate(zip(spec.std, spec.mean, offsets)):
        if abs(scale * 255.0 * s - 1.0) > 1e-6:
            bad(f"net-scale-factor {scale:g} does not divide channel {c} by its std ({s:g} x 255)")
            return
        if abs(o - 255.0 * m) > 1e-6 * 255.0:
            bad(f"offsets[{c}]={o:g}, the model's mean is {m:g} (x 255 = {255.0 * m:g})")
            return


def _up(path: str) -> str:
    return f"../{path}"


def resolve(value: str) -> str | None:
    """A config path (relative to ``deepstream/``) as a bundle path, or None when it leaves the bundle."""
    if not value or value.startswith("/"):
        return None
    parts: list[str] = ["deepstream"]
    for part in PurePosixPath(value).parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts) or None


def _list(value: str) -> list[str]:
    """A GLib list: ``;``-separated, a trailing ``;`` allowed."""
    items = value.split(";")
    if items and items[-1] == "":
        items.pop()
    return [item.strip() for item in items]


def _number(value: float) -> str:
    return f"{value:.10g}"
