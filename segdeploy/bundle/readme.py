"""The bundle's own README.md: what each file is and how to run the model with each consumer."""

from __future__ import annotations

from segdeploy.artifact import OutputKind, Precision
from segdeploy.bundle import deepstream, nvinfer
from segdeploy.bundle.golden import CLASSMAP_GOLDEN_MAX_DIFFERING, FLOAT_GOLDEN_ATOL, FLOAT_GOLDEN_RTOL
from segdeploy.bundle.manifest import (
    CLIENT,
    LABELS,
    MANIFEST,
    MODEL,
    PLAN,
    SCHEMA_VERSION,
    BundleManifest,
    DeepStreamMode,
    InputSpec,
    TritonKind,
)


def readme_text(manifest: BundleManifest, directory: str) -> str:
    """Markdown for ``README.md``; ``directory`` is the bundle directory's name, as the example commands use it."""
    spec, out, engine, golden = manifest.input, manifest.output, manifest.engine, manifest.golden
    name = directory
    shape = "x".join(str(d) for d in spec.shape)
    free = ", ".join(spec.dynamic_axes) or "none (fixed shape)"
    ds = manifest.deepstream
    lines = [
        f"# {manifest.name}: segdeploy bundle",
        "",
        f"Semantic segmentation, `{manifest.architecture}`, {manifest.num_classes} class(es), "
        f"{manifest.precision.value}, ONNX opset {manifest.opset}. `{MANIFEST}` describes everything below "
        f"(schema version {SCHEMA_VERSION}) and lists the sha256 of every file; check the whole bundle with "
        f"`segdeploy bundle --check {name}` (no server or GPU needed).",
        "",
        "## Files",
        "",
        "| file | what |",
        "| --- | --- |",
        f"| `{MANIFEST}` | manifest: input/output contract, frame pipeline, labels, palette, engine facts, provenance, "
        "file hashes |",
        f"| `{MODEL}` | the ONNX model (any ONNX Runtime, TensorRT's parser) |",
    ]
    if engine:
        lines.append(
            f"| `{PLAN}` | TensorRT plan, raw bytes: TensorRT {engine.tensorrt_version} on {engine.gpu_name} "
            f"(compute capability {engine.compute_capability}), {engine.precision.value}; it loads only with that "
            "TensorRT version and compute capability |"
        )
    lines += [
        f"| `{LABELS}` | one label per class, in class-index order |",
        f"| `{golden.frames}`, `{golden.input}`, `{golden.output}` | frames (N x H x W x C uint8, RGB or grey), "
        "the input the frame pipeline makes of them, and ONNX Runtime's output: any integration can check itself |",
    ]
    for model, kind in manifest.triton.items():
        what = "ONNX Runtime backend" if kind is TritonKind.ONNX else "TensorRT backend, the plan above"
        lines.append(f"| `triton/{model}/` | Triton model ({what}): `config.pbtxt`, `1/model.{kind.value}` |")
    lines.append(f"| `{CLIENT}` | Triton client: sends an image over HTTP, writes the colored mask |")
    lines.append(f"| `{ds.config}` | DeepStream Gst-nvinfer config (semantic segmentation) |")
    if ds.onnx:
        lines.append(f"| `{ds.onnx}` | the model as nvinfer feeds it: 0..255 pixels in, per-class scores out |")
    lines += ["| `README.md` | this file |", "", "## Input and output", ""]
    if spec.normalization_fused:
        lines.append(
            f"Input `{spec.name}`: {spec.dtype} {spec.layout}, raw 0..255 pixels in {_color(spec)} order; the model "
            "normalizes them itself."
        )
    else:
        lines.append(
            f"Input `{spec.name}`: {spec.dtype} {spec.layout}, {_color(spec)} order, normalized by you: "
            f"`(pixel / 255 - mean[c]) / std[c]` with mean {_floats(spec.mean)} and std {_floats(spec.std)} "
            "(in the input's channel order)."
        )
    lines += ["", f"Traced shape {shape}; free axes: {free}. " + _sizes(spec)]
    if spec.tensorrt_profile:
        p = spec.tensorrt_profile
        lines.append(
            f"The TensorRT plan runs shapes from {'x'.join(map(str, p.min))} to {'x'.join(map(str, p.max))} "
            f"(tuned for {'x'.join(map(str, p.opt))})."
        )
    lines += [
        "",
        _output_text(out.kind, out.name, out.dtype, out.layout, manifest.num_classes),
        "",
        "Frames: `pipeline` in the manifest says how a frame becomes the input (color order, resize to the nearest "
        "valid size, bilinear; normalization; layout) and how the output becomes a class map at the frame's size "
        "(nearest neighbour). segdeploy's Python tools, the C++ runtime and `client.py` follow it.",
        "",
        "## Run it",
        "",
        "C++ (`cpp/` in segdeploy's repository: ONNX Runtime, or TensorRT with the plan):",
        "",
        "```bash",
        f"segdeploy_infer {name} frame.png -o mask.png     # color mask in the palette of {MANIFEST}",
        f"segdeploy_infer {name} --check-golden            # golden output reproduced?",
    ]
    if engine:
        lines.append(f"segdeploy_infer {name} frame.png -o mask.png --backend trt")
    first = next(iter(manifest.triton))
    lines += [
        "```",
        "",
        "Triton Inference Server: `triton/` is a model repository. Load models by name: with its default "
        "`--exit-on-error=true` one model that fails to load (a plan for another TensorRT or GPU) stops the "
        "whole server.",
        "",
        "```bash",
        f"tritonserver --model-repository=$PWD/{name}/triton --model-control-mode=explicit --load-model={first}",
        f"python {name}/{CLIENT} frame.png -o mask.png --url localhost:8000 --model {first}",
        "```",
        "",
        f"Models: {', '.join(f'`{m}`' for m in manifest.triton)}; with `max_batch_size` > 0 requests carry the "
        "batch axis first and Triton batches them dynamically; -1 in `dims` is a free size.",
    ]
    if engine:
        lines.append(
            f"`{manifest.name}_trt` serves the plan (`--load-model={manifest.name}_trt`): only on a GPU of compute "
            f"capability {engine.compute_capability} with TensorRT {engine.tensorrt_version} (the server's TensorRT "
            "backend must match)."
        )
    lines += ["", "DeepStream (Gst-nvinfer):", "", "```bash"]
    lines += [f"gst-launch-1.0 ... ! nvinfer config-file-path={name}/{ds.config} ! nvsegvisual ! ...", "```", ""]
    lines += _deepstream_text(manifest)
    lines += [
        "",
        "## Checks",
        "",
        f"`segdeploy bundle --check {name}` proves, without a server or GPU: every file is a regular file matching "
        "its sha256 and none is missing or extra; the model's metadata matches the manifest; the frame pipeline "
        "makes the golden input of the golden frames and ONNX Runtime reproduces the golden output (float: "
        f"max|a - b| <= {FLOAT_GOLDEN_RTOL:g} x max|b| + {FLOAT_GOLDEN_ATOL:g}; class map: at most "
        f"{CLASSMAP_GOLDEN_MAX_DIFFERING:.1%} of pixels differ); each Triton config parses with Triton's own "
        "ModelConfig schema, fits the ONNX and what Triton checks at load; the DeepStream config is a valid GLib "
        "key file whose values agree with the model, and nvinfer's pre-processing and parser, simulated on the "
        "golden frames, give the model's own class map.",
        "",
    ]
    return "\n".join(lines)


def _deepstream_text(manifest: BundleManifest) -> list[str]:
    ds, spec = manifest.deepstream, manifest.input
    c, h, w = deepstream.infer_dims(manifest)
    batch, mode = deepstream.batch_size(manifest), deepstream.NETWORK_MODES[manifest.precision]
    if ds.mode is DeepStreamMode.DIRECT:
        engine = deepstream.generated_engine(MODEL, batch, mode)
        text = [
            f"`{ds.config}` runs `{MODEL}` with the plan `{PLAN}`; nvinfer normalizes frames with `net-scale-factor` "
            "and `offsets`, exactly the model's normalization. When the plan does not load (another TensorRT or "
            f"GPU), nvinfer builds an engine from `{MODEL}` at every start and saves it as `{engine}` beside it; "
            f"point `model-engine-file` at `../{engine}` to reuse it.",
        ]
    else:
        engine_name = deepstream.generated_engine(ds.onnx.rsplit("/", 1)[-1], batch, mode)  # type: ignore[union-attr]
        text = [
            f"`{ds.config}` runs `{ds.onnx}`: it takes the 0..255 pixels nvinfer feeds (`net-scale-factor=1`, "
            "`offsets=0`), normalizes them as the model does and outputs "
            f"{nvinfer.score_channels(manifest.num_classes)} "
            "per-class scores whose first maximum is the model's class map (`segmentation-threshold` is below every "
            f"pixel's top score). nvinfer builds its engine at the first start and saves it as `{engine_name}` beside "
            "the ONNX; `model-engine-file` names that file, so later starts reuse it.",
        ]
        if manifest.engine:
            text.append(f"The plan `{PLAN}` takes the model's own input, not nvinfer's; it serves Triton and C++.")
        if manifest.precision in (Precision.INT8, Precision.INT8_FP16):
            text.append(
                "INT8 (Q/DQ): nvinfer sets TensorRT's INT8 flag only with an `int8-calib-file`; without one it "
                "builds with its FP16 flag, which TensorRT may refuse for a Q/DQ network. Build the engine "
                f"on the device instead: `segdeploy build {ds.onnx} -o deepstream/{engine_name} --min-shape "
                f"1x{c}x{h}x{w} --opt-shape {batch}x{c}x{h}x{w} --max-shape {batch}x{c}x{h}x{w}`."
            )
    if manifest.num_classes == 1:
        text.append("One class: the scores are two channels, so nvinfer's class 1 is the class and 0 the rest.")
    if spec.channels == 1:
        text.append(
            "Grey input: nvinfer's GRAY conversion of a color frame may differ from OpenCV's (the golden check "
            "feeds grey frames)."
        )
    text.append(
        f"Frames are scaled to infer-dims {c};{h};{w} (stretched, bilinear: `scaling-filter=1`); nvinfer's scaler "
        "is not OpenCV's, so pixels near class edges may differ from the frame pipeline's."
    )
    return text


def _sizes(spec: InputSpec) -> str:
    top = f" and at most {spec.max_size}" if spec.max_size else ""
    if spec.size_multiple == 1:
        return f"Heights and widths: any, at least {spec.min_size}{top}."
    return f"Heights and widths must be multiples of {spec.size_multiple}, at least {spec.min_size}{top}."


def _color(spec: InputSpec) -> str:
    return "gray" if spec.channels == 1 else spec.color.value.upper()


def _floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _output_text(kind: OutputKind, name: str, dtype: str, layout: str, num_classes: int) -> str:
    head = f"Output `{name}`: {dtype} {layout}, "
    if kind is OutputKind.CLASSMAP:
        one = " (one class: 1 where the class is, 0 elsewhere)" if num_classes == 1 else ""
        return head + f"the class index of each pixel{one}."
    squash = "sigmoid" if num_classes == 1 else "softmax"
    what = "logits" if kind is OutputKind.LOGITS else f"probabilities ({squash})"
    rule = (
        "the class map is `score > " + ("0.5" if kind is OutputKind.PROBS else "0") + "`"
        if num_classes == 1
        else "the class map is the argmax over C (first maximum wins)"
    )
    return head + f"{what} per class; {rule}."
