#include "segdeploy/manifest.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "segdeploy/error.hpp"

namespace segdeploy {

namespace {

using nlohmann::json;

// Reads keys with their dotted path in every message, so a bad manifest names the key that is wrong.
class Reader {
public:
    explicit Reader(std::string file) : file_(std::move(file)) {}

    [[noreturn]] void fail(const std::string& what) const { throw Error(kExitBadInput, file_ + ": " + what); }

    const json& need(const json& obj, const std::string& key, const std::string& path) const {
        if (!obj.is_object()) fail("'" + path + "' is not an object");
        const auto it = obj.find(key);
        if (it == obj.end()) fail("missing key '" + join(path, key) + "'");
        return *it;
    }

    template <typename T>
    T get(const json& obj, const std::string& key, const std::string& path) const {
        const json& value = need(obj, key, path);
        try {
            return value.get<T>();
        } catch (const json::exception&) {
            fail("key '" + join(path, key) + "' has the wrong type (" + std::string(value.type_name()) + ")");
        }
    }

    template <typename T>
    T get_or(const json& obj, const std::string& key, const std::string& path, T fallback) const {
        if (!obj.contains(key) || obj.at(key).is_null()) return fallback;
        return get<T>(obj, key, path);
    }

    static std::string join(const std::string& path, const std::string& key) {
        return path.empty() ? key : path + "." + key;
    }

private:
    std::string file_;
};

std::string require_one_of(const Reader& r, const std::string& value, const std::string& key,
                           std::initializer_list<const char*> allowed) {
    std::string names;
    for (const char* a : allowed) {
        if (value == a) return value;
        names += std::string(names.empty() ? "" : ", ") + a;
    }
    r.fail("'" + key + "' is '" + value + "' (expected one of: " + names + ")");
}

// A path inside the bundle: relative and without "..", so a manifest cannot point outside its directory.
std::string relative_path(const Reader& r, const std::string& value, const std::string& key) {
    const std::filesystem::path p(value);
    if (value.empty() || p.is_absolute() || std::any_of(p.begin(), p.end(), [](const auto& c) { return c == ".."; }))
        r.fail("'" + key + "' must be a path inside the bundle, got '" + value + "'");
    return value;
}

std::optional<TensorRTProfile> read_profile(const Reader& r, const json& input) {
    if (!input.contains("tensorrt_profile") || input.at("tensorrt_profile").is_null()) return std::nullopt;
    const json& p = input.at("tensorrt_profile");
    TensorRTProfile profile{r.get<std::vector<int64_t>>(p, "min", "input.tensorrt_profile"),
                            r.get<std::vector<int64_t>>(p, "opt", "input.tensorrt_profile"),
                            r.get<std::vector<int64_t>>(p, "max", "input.tensorrt_profile")};
    for (const auto* dims : {&profile.min, &profile.opt, &profile.max})
        if (dims->size() != 4) r.fail("'input.tensorrt_profile' shapes must have 4 dimensions");
    for (int i = 0; i < 4; ++i)
        if (profile.min[i] < 1 || profile.min[i] > profile.max[i])
            r.fail("'input.tensorrt_profile' has min > max or a non-positive size");
    return profile;
}

InputSpec read_input(const Reader& r, const json& root) {
    const json& in = r.need(root, "input", "");
    InputSpec spec;
    spec.name = r.get<std::string>(in, "name", "input");
    const std::string dtype = r.get<std::string>(in, "dtype", "input");
    spec.dtype = dtype_from_name(require_one_of(r, dtype, "input.dtype", {"uint8", "float32"}));
    spec.layout = require_one_of(r, r.get<std::string>(in, "layout", "input"), "input.layout", {"NHWC", "NCHW"});
    spec.color = require_one_of(r, r.get<std::string>(in, "color", "input"), "input.color", {"rgb", "bgr"});
    spec.normalization_fused = r.get<bool>(in, "normalization_fused", "input");
    spec.shape = r.get<std::vector<int64_t>>(in, "shape", "input");
    if (spec.shape.size() != 4 || std::any_of(spec.shape.begin(), spec.shape.end(), [](int64_t d) { return d < 1; }))
        r.fail("'input.shape' must be 4 positive sizes, got " + format_shape(spec.shape));
    if (spec.channels() != 1 && spec.channels() != 3)
        r.fail("'input.shape' has " + std::to_string(spec.channels()) + " channels (this runtime feeds 1 or 3)");
    for (const auto& axis : r.get<std::vector<std::string>>(in, "dynamic_axes", "input")) {
        if (require_one_of(r, axis, "input.dynamic_axes", {"batch", "height", "width"}) == "batch")
            spec.dynamic_batch = true;
        else if (axis == "height")
            spec.dynamic_height = true;
        else
            spec.dynamic_width = true;
    }
    spec.size_multiple = r.get<int64_t>(in, "size_multiple", "input");
    spec.min_size = r.get<int64_t>(in, "min_size", "input");
    if (spec.size_multiple < 1) r.fail("'input.size_multiple' must be >= 1");
    if (spec.min_size < 1) r.fail("'input.min_size' must be >= 1");
    if (!spec.normalization_fused) {
        if (spec.dtype != DType::Float32) r.fail("a uint8 input must have 'input.normalization_fused' true");
        spec.mean = r.get<std::vector<float>>(in, "mean", "input");
        spec.std = r.get<std::vector<float>>(in, "std", "input");
        const auto c = static_cast<std::size_t>(spec.channels());
        if (spec.mean.size() != c || spec.std.size() != c)
            r.fail("'input.mean' and 'input.std' need " + std::to_string(c) + " values, one per channel");
        if (std::any_of(spec.std.begin(), spec.std.end(), [](float s) { return !(s > 0.0f); }))
            r.fail("'input.std' values must be > 0");
    }
    spec.tensorrt_profile = read_profile(r, in);
    return spec;
}

// The pipeline of a schema-1 manifest: segdeploy.frames.FramePipeline.from_metadata's rule on the same facts.
FramePipeline derive_pipeline(const Reader& r, const json& root, const InputSpec& in, const OutputSpec& out) {
    FramePipeline p;
    p.channels = static_cast<int>(in.channels());
    p.color = in.color;
    p.dtype = in.dtype;
    p.layout = in.layout;
    p.normalize_in_graph = in.normalization_fused;
    p.mean = in.mean;
    p.std = in.std;
    p.size_multiple = in.size_multiple;
    p.min_size = in.min_size;
    const json& input = root.at("input");
    if (input.contains("max_size") && !input.at("max_size").is_null())
        p.max_size = r.get<int64_t>(input, "max_size", "input");
    if (!(in.dynamic_height && in.dynamic_width))
        p.fixed_size = std::make_pair(in.shape[in.height_axis()], in.shape[in.width_axis()]);
    if (!in.dynamic_batch) p.fixed_batch = in.shape[0];
    p.output = out.kind;
    p.threshold = out.kind == "probs" ? 0.5f : 0.0f;
    return p;
}

// The manifest's `pipeline` object (FramePipeline.to_dict()).
FramePipeline read_pipeline(const Reader& r, const json& root) {
    const json& pl = r.need(root, "pipeline", "");
    const json& conv = r.need(pl, "color_conversion", "pipeline");
    const json& resize = r.need(pl, "resize", "pipeline");
    const json& norm = r.need(pl, "normalize", "pipeline");
    const json& tensor = r.need(pl, "tensor", "pipeline");
    const json& out = r.need(pl, "output", "pipeline");
    FramePipeline p;
    p.from_manifest = true;
    p.channels = r.get<int>(conv, "channels", "pipeline.color_conversion");
    p.color = require_one_of(r, r.get<std::string>(conv, "color", "pipeline.color_conversion"),
                             "pipeline.color_conversion.color", {"rgb", "bgr"});
    // The policies this runtime implements; another one would give other masks.
    require_one_of(r, r.get<std::string>(resize, "policy", "pipeline.resize"), "pipeline.resize.policy",
                   {"nearest_valid"});
    require_one_of(r, r.get<std::string>(resize, "interpolation", "pipeline.resize"),
                   "pipeline.resize.interpolation", {"linear"});
    require_one_of(r, r.get<std::string>(out, "mask_interpolation", "pipeline.output"),
                   "pipeline.output.mask_interpolation", {"nearest"});
    p.size_multiple = r.get<int64_t>(resize, "size_multiple", "pipeline.resize");
    p.min_size = r.get<int64_t>(resize, "min_size", "pipeline.resize");
    if (p.size_multiple < 1 || p.min_size < 1) r.fail("'pipeline.resize' size_multiple and min_size must be >= 1");
    if (resize.contains("max_size") && !resize.at("max_size").is_null()) {
        p.max_size = r.get<int64_t>(resize, "max_size", "pipeline.resize");
        if (*p.max_size < 1) r.fail("'pipeline.resize.max_size' must be >= 1");
    }
    if (resize.contains("fixed_size") && !resize.at("fixed_size").is_null()) {
        const auto hw = r.get<std::vector<int64_t>>(resize, "fixed_size", "pipeline.resize");
        if (!hw.empty()) {  // Python writes null, and reads an empty list as null too
            if (hw.size() != 2 || hw[0] < 1 || hw[1] < 1)
                r.fail("'pipeline.resize.fixed_size' must be [height, width]");
            p.fixed_size = std::make_pair(hw[0], hw[1]);
        }
    }
    p.normalize_in_graph = r.get<bool>(norm, "in_graph", "pipeline.normalize");
    p.mean = r.get<std::vector<float>>(norm, "mean", "pipeline.normalize");
    p.std = r.get<std::vector<float>>(norm, "std", "pipeline.normalize");
    const double scale = r.get<double>(norm, "scale", "pipeline.normalize");
    if (std::abs(scale - 1.0 / 255.0) > 1e-12)
        r.fail("'pipeline.normalize.scale' is " + std::to_string(scale) + "; this runtime implements 1/255");
    p.dtype = dtype_from_name(require_one_of(r, r.get<std::string>(tensor, "dtype", "pipeline.tensor"),
                                             "pipeline.tensor.dtype", {"uint8", "float32"}));
    p.layout = require_one_of(r, r.get<std::string>(tensor, "layout", "pipeline.tensor"), "pipeline.tensor.layout",
                              {"NCHW", "NHWC"});
    if (tensor.contains("fixed_batch") && !tensor.at("fixed_batch").is_null()) {
        p.fixed_batch = r.get<int64_t>(tensor, "fixed_batch", "pipeline.tensor");
        if (*p.fixed_batch < 1) r.fail("'pipeline.tensor.fixed_batch' must be >= 1");
    }
    p.output = require_one_of(r, r.get<std::string>(out, "kind", "pipeline.output"), "pipeline.output.kind",
                              {"logits", "probs", "classmap"});
    p.threshold = r.get<float>(out, "single_channel_threshold", "pipeline.output");
    return p;
}

// A pipeline must describe the model the manifest's input and output describe, and be one this runtime can feed.
void check_pipeline(const Reader& r, const FramePipeline& p, const InputSpec& in, const OutputSpec& out) {
    if (p.channels != in.channels() || p.dtype != in.dtype || p.layout != in.layout || p.output != out.kind)
        r.fail("'pipeline' (" + std::to_string(p.channels) + " channels, " + dtype_name(p.dtype) + " " + p.layout +
               ", " + p.output + ") disagrees with 'input'/'output' (" + std::to_string(in.channels()) +
               " channels, " + dtype_name(in.dtype) + " " + in.layout + ", " + out.kind + ")");
    if (!p.normalize_in_graph) {
        if (p.dtype != DType::Float32) r.fail("a uint8 input must be normalized in the graph");
        const auto c = static_cast<std::size_t>(p.channels);
        for (const auto* values : {&p.mean, &p.std})
            if (values->size() != c && values->size() != 1)
                r.fail("the pipeline's mean and std need " + std::to_string(c) + " values, one per channel");
        if (std::any_of(p.std.begin(), p.std.end(), [](float s) { return !(s > 0.0f); }))
            r.fail("the pipeline's std values must be > 0");
    }
    if (p.fixed_size) {
        if (p.fixed_size->first != in.shape[in.height_axis()] || p.fixed_size->second != in.shape[in.width_axis()])
            r.fail("'pipeline.resize.fixed_size' is not the input's height and width");
    } else {
        const int64_t first = (p.min_size + p.size_multiple - 1) / p.size_multiple * p.size_multiple;
        if (p.max_size && *p.max_size / p.size_multiple * p.size_multiple < first)
            r.fail("no multiple of " + std::to_string(p.size_multiple) + " lies in [" + std::to_string(p.min_size) +
                   ", " + std::to_string(*p.max_size) + "]");
    }
    if (p.fixed_batch && *p.fixed_batch != in.shape[0])
        r.fail("'pipeline.tensor.fixed_batch' is not the input's batch");
}

OutputSpec read_output(const Reader& r, const json& root) {
    const json& out = r.need(root, "output", "");
    OutputSpec spec;
    spec.name = r.get<std::string>(out, "name", "output");
    spec.kind = require_one_of(r, r.get<std::string>(out, "kind", "output"), "output.kind",
                               {"logits", "probs", "classmap"});
    const std::string dtype = r.get<std::string>(out, "dtype", "output");
    spec.layout = r.get<std::string>(out, "layout", "output");
    if (spec.kind == "classmap") {
        spec.dtype = dtype_from_name(require_one_of(r, dtype, "output.dtype", {"int32", "int64", "uint8"}));
        require_one_of(r, spec.layout, "output.layout", {"NHW"});
    } else {
        spec.dtype = dtype_from_name(require_one_of(r, dtype, "output.dtype", {"float32"}));
        require_one_of(r, spec.layout, "output.layout", {"NCHW"});
    }
    return spec;
}

}  // namespace

Manifest load_manifest(const std::filesystem::path& bundle_dir) {
    std::error_code ec;
    if (!std::filesystem::is_directory(bundle_dir, ec))
        throw Error(kExitBadInput, "bundle directory " + bundle_dir.string() + " does not exist");
    const auto file = bundle_dir / "segdeploy.json";
    const Reader r(file.string());
    std::ifstream stream(file);
    if (!stream) throw Error(kExitBadInput, file.string() + " is missing: not a segdeploy bundle");
    json root;
    try {
        root = json::parse(stream);
    } catch (const json::exception& exc) {
        r.fail("not valid JSON (" + first_line(exc.what()) + ")");
    }
    if (!root.is_object()) r.fail("not a JSON object");

    Manifest m;
    m.dir = bundle_dir;
    m.schema_version = r.get<int>(root, "schema_version", "");
    if (m.schema_version != 1 && m.schema_version != 2)
        r.fail("schema_version " + std::to_string(m.schema_version) + " is not supported (this runtime reads 1 and 2)");
    m.name = r.get_or<std::string>(root, "name", "", "");
    m.architecture = r.get_or<std::string>(root, "architecture", "", "");
    m.precision = r.get_or<std::string>(root, "precision", "", "fp32");
    m.num_classes = r.get<int>(root, "num_classes", "");
    if (m.num_classes < 1) r.fail("'num_classes' must be >= 1");
    m.labels = r.get_or<std::vector<std::string>>(root, "labels", "", {});
    for (const auto& rgb : r.get<std::vector<std::vector<int>>>(root, "palette", "")) {
        if (rgb.size() != 3 || std::any_of(rgb.begin(), rgb.end(), [](int v) { return v < 0 || v > 255; }))
            r.fail("'palette' entries must be [r, g, b] triples of 0..255");
        m.palette.push_back({static_cast<unsigned char>(rgb[0]), static_cast<unsigned char>(rgb[1]),
                             static_cast<unsigned char>(rgb[2])});
    }
    const std::size_t colors = static_cast<std::size_t>(std::max(m.num_classes, 2));
    if (m.palette.size() < colors)
        r.fail("'palette' has " + std::to_string(m.palette.size()) + " colors for " + std::to_string(colors) +
               " class values");
    m.input = read_input(r, root);
    m.output = read_output(r, root);
    const bool has_pipeline = root.contains("pipeline") && !root.at("pipeline").is_null();
    m.pipeline = has_pipeline ? read_pipeline(r, root) : derive_pipeline(r, root, m.input, m.output);
    check_pipeline(r, m.pipeline, m.input, m.output);

    const json& golden = r.need(root, "golden", "");
    m.golden_input = relative_path(r, r.get<std::string>(golden, "input", "golden"), "golden.input");
    m.golden_output = relative_path(r, r.get<std::string>(golden, "output", "golden"), "golden.output");

    if (root.contains("engine") && !root.at("engine").is_null()) {
        const json& e = root.at("engine");
        EngineSpec engine;
        engine.file = relative_path(r, r.get<std::string>(e, "file", "engine"), "engine.file");
        engine.tensorrt_version = r.get<std::string>(e, "tensorrt_version", "engine");
        engine.compute_capability = r.get<std::string>(e, "compute_capability", "engine");
        engine.gpu_name = r.get_or<std::string>(e, "gpu_name", "engine", "");
        engine.precision = r.get_or<std::string>(e, "precision", "engine", "");
        m.engine = engine;
    }
    return m;
}

}  // namespace segdeploy
