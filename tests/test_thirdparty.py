"""Third-party segmentation models (transformers, timm, segmentation_models_pytorch) through the default export.

Tiny configurations, random weights with calibrated BatchNorm, nothing downloaded; the ``thirdparty``
extra installs the libraries. Every model exports a file whose every claimed size runs in ONNX Runtime
and matches PyTorch: dynamic, or narrowed to what the capture holds with the reason in one line.
Never a "verified" for a size the file cannot run, and never an ONNX Runtime contrib op.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import calibrate_batchnorm, run_onnx

pytestmark = pytest.mark.slow

thirdparty = pytest.importorskip("thirdparty_models")
thirdparty.prepare()
pytest.importorskip("transformers")
pytest.importorskip("timm")

from segdeploy import export_onnx  # noqa: E402
from segdeploy.export.translate import nonstandard_ops  # noqa: E402

TRACE = (1, 3, 128, 128)


def _claimed_sizes(rule, trace):
    """Sizes the file's rule admits, spread over it: its ends, beyond the trace, non-square both ways, batch 2."""
    if rule.fixed is not None:
        return [(1, 3, *rule.fixed), (2, 3, *rule.fixed)]
    m, low = rule.multiple, rule.min_size
    high = rule.max_size if rule.max_size is not None else 2 * trace[2]

    def side(v):
        return min(max(v // m * m, -(-low // m) * m), high // m * m)

    return sorted(
        {
            (2, 3, side(low), side(low + m)),
            (1, 3, side(high), side(trace[3] // 2)),
            (1, 3, side(trace[2] // 2 + 1), side(high)),
            (2, 3, side(3 * trace[2] // 2 + 1), side(5 * trace[3] // 4)),
        }
    )


# Models whose rule must stay the model's own (not narrowed by the capture), and the rewrites that make them so.
DYNAMIC = {
    "transformers SegFormer": (),
    "transformers UperNet-ConvNeXt": (),
    "transformers MobileViTV2": ("unfold_patches", "fold_patches"),
    "timm ViT (dynamic_img_size)": ("antialias_resize",),
    "smp DPT": ("antialias_resize",),
}


@pytest.mark.parametrize("name", list(thirdparty.MODELS))
def test_a_third_party_model_exports_and_runs_at_every_size_it_claims(name, tmp_path):
    torch.manual_seed(0)
    model = calibrate_batchnorm(thirdparty.MODELS[name](), (2, 3, 128, 128))
    path = tmp_path / "model.onnx"
    result = export_onnx(model, path, input_shape=TRACE, opset=17)
    assert result.verification.passed
    proto = onnx.load(path)
    assert nonstandard_ops(proto) == []  # no ONNX Runtime contrib op in a file meant for TensorRT
    rule = result.size_rule
    if rule.narrowed:  # said plainly, naming where the capture specialized
        assert any(note.startswith("sizes narrowed: ") and ".py:" in note for note in result.warnings)
    if name in DYNAMIC:
        assert rule.fixed is None and rule.max_size is None and not rule.narrowed, rule
        assert set(DYNAMIC[name]) <= set(result.metadata.rewrites)
    for shape in _claimed_sizes(rule, TRACE):
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x).numpy()  # a size the file claims is one PyTorch runs
        got = run_onnx(proto, x.numpy())
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= 1e-3 * scale, (name, shape)
