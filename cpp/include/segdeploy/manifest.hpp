// The bundle manifest (segdeploy.json, schema_version 1), parsed and checked.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

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
    std::optional<EngineSpec> engine;
    std::string golden_input, golden_output;  // relative to the bundle

    std::filesystem::path model_path() const { return dir / "model.onnx"; }
    std::filesystem::path resolve(const std::string& relative) const { return dir / relative; }
};

// Reads BUNDLE_DIR/segdeploy.json. Throws Error(kExitBadInput) with one line naming the problem: a missing
// directory or file, invalid JSON, a missing key or a value outside the schema. File hashes are not checked.
Manifest load_manifest(const std::filesystem::path& bundle_dir);

}  // namespace segdeploy
