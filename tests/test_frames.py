"""The frame pipeline: frames to inputs and outputs to class maps, as the metadata describes."""

from __future__ import annotations

import numpy as np
import pytest

from segdeploy.artifact import ColorOrder, InputFormat, Metadata, OutputKind, Preprocessing
from segdeploy.errors import UserInputError
from segdeploy.frames import FramePipeline


def _metadata(**kw) -> Metadata:
    base = dict(num_classes=4, in_channels=3, trace_shape=(1, 3, 64, 64), size_multiple=32, min_size=32)
    base.update(kw)
    return Metadata(**base)


def test_run_size_rounds_each_side_to_the_nearest_valid_size_halves_up():
    pipe = FramePipeline.from_metadata(_metadata())
    assert pipe.run_size(100, 47) == (96, 32)  # 100 -> 96 (nearest), 47 -> 32 (below the half)
    assert pipe.run_size(48, 10) == (64, 32)  # 48 is half way: up; 10 -> the minimum
    bounded = FramePipeline.from_metadata(_metadata(max_size=64))
    assert bounded.run_size(500, 500) == (64, 64)


def test_a_static_file_runs_every_frame_at_its_one_size():
    pipe = FramePipeline.from_metadata(_metadata(dynamic_axes=(), trace_shape=(2, 3, 48, 80)))
    assert pipe.run_size(1000, 7) == (48, 80)
    assert pipe.fixed_batch == 2


def test_float_input_is_normalized_by_the_caller_in_the_input_color_order():
    meta = _metadata(preprocessing=Preprocessing(InputFormat.FLOAT32_NCHW, ColorOrder.BGR))
    pipe = FramePipeline.from_metadata(meta)
    frame = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)  # RGB, already valid
    batch = pipe.to_input([frame], frame_color="rgb")
    assert batch.shape == (1, 3, 64, 96) and batch.dtype == np.float32
    bgr = frame[:, :, ::-1].astype(np.float32) / np.float32(255)
    expected = (bgr - np.array(pipe.mean, np.float32)) / np.array(pipe.std, np.float32)
    np.testing.assert_array_equal(batch[0], expected.transpose(2, 0, 1))
    assert pipe.mean == tuple(reversed(meta.preprocessing.mean))


def test_uint8_nhwc_input_keeps_raw_pixels_and_resizes_to_a_valid_size():
    meta = _metadata(preprocessing=Preprocessing(InputFormat.UINT8_NHWC, ColorOrder.RGB))
    pipe = FramePipeline.from_metadata(meta)
    frame = np.random.default_rng(1).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    batch = pipe.to_input([frame, frame])
    assert batch.shape == (2, 64, 64, 3) and batch.dtype == np.uint8


def test_outputs_become_class_maps_and_return_to_the_frame_size():
    logits = np.zeros((1, 3, 2, 2), np.float32)
    logits[0, 2, 0, 0] = 1.0
    logits[0, 1, 1, 1] = logits[0, 2, 1, 1] = 1.0  # a tie: the first maximum wins
    pipe = FramePipeline.from_metadata(_metadata(output=OutputKind.LOGITS))
    np.testing.assert_array_equal(pipe.to_classmap(logits)[0], [[2, 0], [0, 1]])
    one = FramePipeline.from_metadata(_metadata(output=OutputKind.PROBS))
    np.testing.assert_array_equal(one.to_classmap(np.array([[[[0.4, 0.6]]]], np.float32))[0], [[0, 1]])
    back = pipe.restore(pipe.to_classmap(logits)[0], (4, 6))
    assert back.shape == (4, 6) and back[0, 0] == 2 and back[3, 5] == 1


def test_the_fast_argmax_is_numpys_first_maximum_bit_for_bit():
    from segdeploy.frames import first_argmax

    rng = np.random.default_rng(0)
    # rounded scores: many exact ties between classes, where the first maximum must win
    scores = np.round(rng.standard_normal((2, 21, 37, 53)), 1).astype(np.float32)
    expected = scores.argmax(axis=1)
    assert first_argmax(scores).dtype == np.int32
    np.testing.assert_array_equal(first_argmax(scores), expected)
    np.testing.assert_array_equal(first_argmax(scores[:, :, ::2, 1::3]), scores[:, :, ::2, 1::3].argmax(axis=1))
    scores[0, 3, 5, 6] = np.inf
    np.testing.assert_array_equal(first_argmax(scores), scores.argmax(axis=1))
    scores[1, 7, 3, 4] = np.nan  # numpy counts a NaN as the maximum
    np.testing.assert_array_equal(first_argmax(scores), scores.argmax(axis=1))
    many = rng.standard_normal((1, 300, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(first_argmax(many), many.argmax(axis=1))


def test_the_manifest_form_round_trips_and_refuses_unknown_policies():
    pipe = FramePipeline.from_metadata(_metadata(max_size=256))
    data = pipe.to_dict()
    assert FramePipeline.from_dict(data) == pipe
    data["resize"]["policy"] = "letterbox"
    with pytest.raises(UserInputError, match="letterbox"):
        FramePipeline.from_dict(data)
    with pytest.raises(UserInputError, match="malformed"):
        FramePipeline.from_dict({"resize": {}})
