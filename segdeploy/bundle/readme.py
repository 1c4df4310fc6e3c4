"""The bundle's own README.md: what each file is and how to run the model with each consumer."""

from __future__ import annotations

from typing import Any

from segdeploy.bundle.manifest import (
    CLASSMAP_GOLDEN_MAX_DIFFERING,
    DEEPSTREAM_CONFIG,
    FLOAT_GOLDEN_ATOL,
    FLOAT_GOLDEN_RTOL,
    GOLDEN_INPUT,
    GOLDEN_OUTPUT,
    LABELS,
    MANIFEST,
    MODEL,
    PLAN,
)


def readme_text(
    manifest: dict[str, Any], triton_models: dict[str, str], deepstream: tuple[list[str], list[str]], directory: str
) -> str:
    """Markdown for ``README.md``.

    Args:
        manifest: the bundle's manifest (``files`` need not be filled in).
        triton_models: Triton model name -> ``onnx`` or ``plan``.
        deepstream: :func:`segdeploy.bundle.deepstream.fit`'s reasons and notes.
        directory: the bundle directory's name, as the example commands use it.
    """
    spec, out = manifest["input"], manifest["output"]
    name = directory  # the example commands run beside the bundle directory
    engine = manifest.get("engine")
    reasons, notes = deepstream
    shape = "x".join(str(d) for d in spec["shape"])
    free = ", ".join(spec["dynamic_axes"]) or "none (fixed shape)"
    lines = [
        f"# {manifest['name']}: segdeploy bundle",
        "",
        (
            f"Semantic segmentation, `{manifest['architecture']}`, {manifest['num_classes']} class(es), "
            f"{manifest['precision']}, ONNX opset {manifest['opset']}. `{MANIFEST}` describes everything below "
            "(schema version 1) and lists the sha256 of every file; check the whole bundle with "
            f"`segdeploy bundle --check {name}` (no server or GPU needed)."
        ),
        "",
        "## Files",
        "",
        "| file | what |",
        "| --- | --- |",
        f"| `{MANIFEST}` | manifest: input/output contract, labels, palette, engine facts, file hashes |",
        f"| `{MODEL}` | the ONNX model (any ONNX Runtime, TensorRT's parser) |",
    ]
    if engine:
        lines.append(
            f"| `{PLAN}` | TensorRT plan, raw bytes: TensorRT {engine['tensorrt_version']} on "
            f"{engine['gpu_name']} (compute capability {engine['compute_capability']}), "
            f"{engine['precision']}; it loads only with that TensorRT version and compute capability |"
        )
    lines += [
        f"| `{LABELS}` | one label per class, in class-index order |",
        (
            f"| `{GOLDEN_INPUT}`, `{GOLDEN_OUTPUT}` | one input exactly as the model takes it and ONNX Runtime's "
            "output "
            "for it: any integration can check itself |"
        ),
    ]
    for model, kind in triton_models.items():
        what = "ONNX Runtime backend" if kind == "onnx" else "TensorRT backend, the plan above"
        lines.append(f"| `triton/{model}/` | Triton model ({what}): `config.pbtxt`, `1/model.{kind}` |")
    if not reasons:
        lines.append(f"| `{DEEPSTREAM_CONFIG}` | DeepStream Gst-nvinfer config (semantic segmentation) |")
    lines += ["| `README.md` | this file |", ""]

    lines += ["## Input and output", ""]
    if spec["normalization_fused"]:
        lines.append(
            f"Input `{spec['name']}`: {spec['dtype']} {spec['layout']}, raw 0..255 pixels in "
            f"{_color(spec)} order; the model normalizes them itself."
        )
    else:
        lines.append(
            f"Input `{spec['name']}`: {spec['dtype']} {spec['layout']}, {_color(spec)} order, normalized by "
            f"you: `(pixel / 255 - mean[c]) / std[c]` with mean {_floats(spec['mean'])} and std "
            f"{_floats(spec['std'])} (in the input's channel order)."
        )
    lines += [
        "",
        f"Traced shape {shape}; free axes: {free}. " + _sizes(spec),
    ]
    if spec.get("tensorrt_profile"):
        p = spec["tensorrt_profile"]
        sizes = " to ".join("x".join(map(str, p[k])) for k in ("min", "max"))
        lines.append(f"The TensorRT plan runs shapes from {sizes} (tuned for {'x'.join(map(str, p['opt']))}).")
    lines += ["", _output_text(out, manifest["num_classes"]), ""]

    lines += [
        "## Run it",
        "",
        "Python, ONNX Runtime:",
        "",
        "```python",
        "import numpy as np",
        "import onnxruntime as ort",
        "",
        f'session = ort.InferenceSession("{MODEL}", providers=["CPUExecutionProvider"])',
        f'x = np.load("{GOLDEN_INPUT}")  # or your frames, prepared as above',
        f'out = session.run(["{out["name"]}"], {{"{spec["name"]}": x}})[0]',
        _python_classmap(out, manifest["num_classes"]),
        "```",
        "",
        "C++ (`cpp/` in segdeploy's repository: ONNX Runtime, or TensorRT with the plan):",
        "",
        "```bash",
        f"segdeploy_infer {name} frame.png -o mask.png     # color mask in the palette of {MANIFEST}",
        f"segdeploy_infer {name} --check-golden            # golden output reproduced?",
    ]
    if engine:
        lines.append(f"segdeploy_infer {name} frame.png -o mask.png --backend trt")
    lines += [
        "```",
        "",
        "Triton Inference Server: `triton/` is a model repository.",
        "",
        "```bash",
        f"tritonserver --model-repository=$PWD/{name}/triton",
        "```",
        "",
    ]
    batch = "with `max_batch_size` > 0 requests carry the batch axis first and Triton batches them dynamically"
    lines.append(f"Models: {', '.join(f'`{m}`' for m in triton_models)}; {batch}; -1 in `dims` is a free size.")
    if engine:
        lines.append(
            f"`{manifest['name']}_trt` serves the plan: only on a GPU of compute capability "
            f"{engine['compute_capability']} "
            f"with TensorRT {engine['tensorrt_version']} (the server's TensorRT backend must match)."
        )
    lines += ["", "DeepStream (Gst-nvinfer):", ""]
    if reasons:
        lines.append(
            "No DeepStream config is written for this model: nvinfer's own pre-processing and segmentation "
            "parser would run it without an error and give wrong masks, because"
        )
        lines += [f"- {reason}" for reason in reasons]
        lines += [
            "",
            (
                "Export the model again with the options named above to get a config, or use a custom "
                "parser library (`parse-segmentation-func-name`, `custom-lib-path`) and nvdspreprocess."
            ),
        ]
    else:
        lines += [
            "```bash",
            f"gst-launch-1.0 ... ! nvinfer config-file-path={name}/{DEEPSTREAM_CONFIG} ! nvsegvisual ! ...",
            "```",
            "",
            (
                f"`{DEEPSTREAM_CONFIG}` uses `network-type=2`; its paths are relative to the config file. "
                "nvinfer scales "
                "frames to `infer-dims` and normalizes them with `net-scale-factor` and `offsets`, exactly the model's "
                "normalization."
            ),
        ]
        lines += [f"Note: {note}." for note in notes]
    lines += [
        "",
        "## Checks",
        "",
        (
            f"`segdeploy bundle --check {name}` proves, without a server or GPU: every file matches its sha256 "
            "and none "
            "is missing or extra; the model's metadata matches the manifest; ONNX Runtime reproduces the golden output "
            f"(float: max|a - b| <= {FLOAT_GOLDEN_RTOL:g} x max|b| + {FLOAT_GOLDEN_ATOL:g}; class map: at most "
            f"{CLASSMAP_GOLDEN_MAX_DIFFERING:.1%} of pixels differ); each Triton config parses with Triton's own "
            "ModelConfig schema and its names, data types, ranks and class count match the ONNX; the DeepStream "
            "config is a valid GLib key file whose values are in range and agree with the model."
        ),
        "",
    ]
    return "\n".join(lines)


def _sizes(spec: dict[str, Any]) -> str:
    if spec["size_multiple"] == 1:
        return f"Heights and widths: any, at least {spec['min_size']}."
    return f"Heights and widths must be multiples of {spec['size_multiple']} and at least {spec['min_size']}."


def _color(spec: dict[str, Any]) -> str:
    channels = spec["shape"][spec["layout"].index("C")]
    return "gray" if channels == 1 else spec["color"].upper()


def _floats(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _output_text(out: dict[str, Any], num_classes: int) -> str:
    head = f"Output `{out['name']}`: {out['dtype']} {out['layout']}, "
    if out["kind"] == "classmap":
        one = " (one class: 1 where the class is, 0 elsewhere)" if num_classes == 1 else ""
        return head + f"the class index of each pixel{one}."
    squash = "sigmoid" if num_classes == 1 else "softmax"
    what = "logits" if out["kind"] == "logits" else f"probabilities ({squash})"
    rule = (
        "the class map is `score > " + ("0.5" if out["kind"] == "probs" else "0") + "`"
        if num_classes == 1
        else "the class map is the argmax over C (first maximum wins)"
    )
    return head + f"{what} per class; {rule}."


def _python_classmap(out: dict[str, Any], num_classes: int) -> str:
    if out["kind"] == "classmap":
        return "classes = out  # N x H x W class indices"
    if num_classes == 1:
        return f"classes = (out[:, 0] > {0.5 if out['kind'] == 'probs' else 0.0}).astype(np.int32)"
    return "classes = out.argmax(axis=1)  # N x H x W"
