"""The metadata's JSON form: one writer (to_dict), one reader (from_dict), described by a JSON Schema in the package."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import jsonschema
import pytest
from torch import nn

from segdeploy import __version__
from segdeploy.artifact import (
    ColorOrder,
    InputFormat,
    Metadata,
    OutputKind,
    Precision,
    Preprocessing,
    read_metadata,
)
from segdeploy.errors import UserInputError

FULL = Metadata(
    architecture="segnet",
    source="zoo",
    config={"width_mult": 0.125},
    num_classes=12,
    in_channels=3,
    trace_shape=(1, 3, 360, 480),
    dynamic_axes=("batch", "height", "width"),
    min_size=32,
    size_multiple=32,
    max_size=4096,
    rewrites=("max_unpool",),
    precision=Precision.INT8_FP16,
    opset=17,
    preprocessing=Preprocessing(InputFormat.UINT8_NHWC, ColorOrder.BGR, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)),
    output=OutputKind.CLASSMAP,
    unpool_inputs=(("relu_1", 2), ("relu_3", 2)),
    weights="segnet.pt",
    weights_sha256="0" * 64,
    init_seed=0,
    torch_version="2.13.0+cpu",
    segdeploy_version="0.1.0",
)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((resources.files("segdeploy") / "schemas" / "metadata.schema.json").read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_names_exactly_the_fields_and_enum_values_of_the_code(validator):
    properties = validator.schema["properties"]
    assert list(properties) == list(Metadata().to_dict()) == validator.schema["required"]
    assert properties["precision"]["enum"] == [p.value for p in Precision]
    assert properties["output"]["enum"] == [k.value for k in OutputKind]
    pre = properties["preprocessing"]["properties"]
    assert pre["input_format"]["enum"] == [f.value for f in InputFormat]
    assert pre["color"]["enum"] == [c.value for c in ColorOrder]


@pytest.mark.parametrize("metadata", [Metadata(), FULL], ids=["defaults", "every field"])
def test_metadata_round_trips_through_json_and_the_onnx_props_and_validates(validator, metadata):
    data = json.loads(json.dumps(metadata.to_dict()))
    validator.validate(data)
    assert Metadata.from_dict(data) == metadata
    # the ONNX form stamps the writer's version where none is given
    stamped = dataclasses.replace(metadata, segdeploy_version=metadata.segdeploy_version or __version__)
    assert Metadata.from_props(metadata.to_props()) == stamped


def test_an_exported_files_metadata_validates(validator, tmp_path):
    from segdeploy.pipeline import export_onnx

    path = tmp_path / "tiny.onnx"
    export_onnx(nn.Conv2d(3, 2, 1), path, input_shape=(1, 3, 16, 16), verify=False)
    validator.validate(read_metadata(path).to_dict())


@pytest.mark.parametrize(
    "edit",
    [
        {"precision": "fp64"},
        {"output": "mask"},
        {"trace_shape": [1, 3, 64]},
        {"dynamic_axes": ["batch", "depth"]},
        {"weights_sha256": "not-a-digest"},
        {"unpool_inputs": [["relu_1"]]},
        {"colour": "rgb"},
    ],
)
def test_wrong_metadata_fails_the_schema(validator, edit):
    data = {**FULL.to_dict(), **edit}
    assert list(validator.iter_errors(data))


def test_the_reader_refuses_what_it_cannot_read():
    with pytest.raises(UserInputError, match="unknown metadata keys: colour"):
        Metadata.from_dict({**FULL.to_dict(), "colour": "rgb"})
    with pytest.raises(UserInputError, match="bad precision metadata 'fp64'"):
        Metadata.from_dict({**FULL.to_dict(), "precision": "fp64"})
