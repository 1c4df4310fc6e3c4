// The bundle manifest (segdeploy.json, schema versions 1 and 2), parsed and checked, and the frame pipeline it
// describes: `pipeline` in schema 2, derived from the schema-1 `input`/`output` fields otherwise (the same rule
// as segdeploy.frames.FramePipeline.from_metadata).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>
#include <utility>

#include "segdeploy/tensor.hpp"

namespace segdeploy {

struct TensorRTProfile {
    std::vector<int64_t> min, opt, max;  // in the input's layout
};

struct InputSpec {
    std::string name;
    DType dtype = DType::UInt8;
    std::string layout;  // "NHWC" or "NCHW"
    std::string color;   // "rgb" or "bgr": the channel order the model expects
    std::vector<float> mean, std;  // 0..1 units, model channel order
    bool normalization_fused = true;  // true: feed raw 0..255 pixels
    std::vector<int64_t> shape;       // the traced example shape, in `layout`
    bool dynamic_batch = false, dynamic_height = false, dynamic_width = false;
    int64_t size_multiple = 1;
    int64_t min_size = 1;
    std::optional<TensorRTProfile> tensorrt_profile;

    int batch_axis() const { return 0; }
    int channel_axis() const { return layout == "NHWC" ? 3 : 1; }
    int height_axis() const { return layout == "NHWC" ? 1 : 2; }
    int width_axis() const { return layout == "NHWC" ? 2 : 3; }
    int64_t channels() const { return shape[channel_axis()]; }
};

struct OutputSpec {
    std::string name;
    std::string kind;  // "logits", "probs" or "classmap"
    DType dtype = DType::Int32;
    std::string layout;  // "NCHW" (logits, probs) or "NHW" (classmap)
};

// How a frame becomes the model input and the output a class map at the frame's size (segdeploy/frames.py):
// color conversion, resize to the nearest valid size (halves up) within [min_size, max_size] or the fixed size,
// bilinear; (x / 255 - mean) / std in float32 unless normalized in the graph; layout; argmax (first maximum) or
// a one-channel threshold; nearest-neighbour back to the frame's size.
struct FramePipeline {
    int channels = 3;
    std::string color = "rgb";  // "rgb" or "bgr": channel order of a 3-channel input
    DType dtype = DType::UInt8;
    std::string layout = "NCHW";  // "NCHW" or "NHWC"
    bool normalize_in_graph = true;
    std::vector<float> mean, std;  // 0..1 units, input channel order
    int64_t size_multiple = 1, min_size = 1;
    std::optional<int64_t> max_size;                   // unbounded when empty
    std::optional<std::pair<int64_t, int64_t>> fixed_size;  // (height, width) of a file without dynamic H/W
    std::optional<int64_t> fixed_batch;                // the batch of a file without a dynamic batch axis
    std::string output = "logits";                     // "logits", "probs" or "classmap"
    float threshold = 0.0f;                            // one-channel scores: class 1 above it
    bool from_manifest = false;                        // read from `pipeline` (true) or derived from v1 fields
};

struct EngineSpec {
    std::string file;  // relative to the bundle
    std::string tensorrt_version, gpu_name, compute_capability, precision;
};

struct Manifest {
    std::filesystem::path dir;  // the bundle directory
    int schema_version = 1;
    std::string name, architecture, precision;
    int num_classes = 0;
    std::vector<std::string> labels;
    std::vector<std::array<unsigned char, 3>> palette;  // RGB, max(num_classes, 2) entries
    InputSpec input;
    OutputSpec output;
    FramePipeline pipeline;
    std::optional<EngineSpec> engine;
    std::string golden_input, golden_output;  // relative to the bundle

    std::filesystem::path model_path() const { return dir / "model.onnx"; }
    std::filesystem::path resolve(const std::string& relative) const { return dir / relative; }
};

// Reads BUNDLE_DIR/segdeploy.json (schema_version 1 or 2). Throws Error(kExitBadInput) with one line naming the problem: a missing
// directory or file, invalid JSON, a missing key or a value outside the schema. File hashes are not checked.
Manifest load_manifest(const std::filesystem::path& bundle_dir);

}  // namespace segdeploy
