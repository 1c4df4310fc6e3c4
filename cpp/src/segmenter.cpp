#include "segdeploy/segmenter.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include <opencv2/imgproc.hpp>

#include "backends.hpp"

namespace segdeploy {

namespace {

// The size nearest to `x` that is a multiple of `multiple` within [lo, hi].
int64_t nearest_valid(int64_t x, int64_t multiple, int64_t lo, int64_t hi, const char* axis) {
    const int64_t first = (lo + multiple - 1) / multiple * multiple;
    const int64_t last = hi / multiple * multiple;
    if (first > last)
        throw Error(kExitBadInput, std::string("no ") + axis + " between " + std::to_string(lo) + " and " +
                                       std::to_string(hi) + " is a multiple of " + std::to_string(multiple));
    const int64_t rounded = (x + multiple / 2) / multiple * multiple;  // halves round up
    return std::clamp(rounded, first, last);
}

int convert_code(int frame_channels, int model_channels, bool rgb) {
    if (model_channels == 1) {
        if (frame_channels == 1) return -1;
        return frame_channels == 4 ? cv::COLOR_BGRA2GRAY : cv::COLOR_BGR2GRAY;
    }
    if (frame_channels == 1) return rgb ? cv::COLOR_GRAY2RGB : cv::COLOR_GRAY2BGR;
    if (frame_channels == 4) return rgb ? cv::COLOR_BGRA2RGB : cv::COLOR_BGRA2BGR;
    return rgb ? cv::COLOR_BGR2RGB : -1;  // -1: already in order
}

}  // namespace

BackendKind backend_from_name(const std::string& name) {
    if (name == "ort" || name == "onnxruntime") return BackendKind::OnnxRuntime;
    if (name == "trt" || name == "tensorrt") return BackendKind::TensorRT;
    throw Error(kExitBadInput, "unknown backend '" + name + "' (expected ort or trt)");
}

std::string runtime_versions() {
#ifdef SEGDEPLOY_HAVE_TENSORRT
    return "onnxruntime " + detail::ort_version() + "; TensorRT " + detail::trt_version();
#else
    return "onnxruntime " + detail::ort_version() + "; TensorRT: not built";
#endif
}

bool Segmenter::has_tensorrt() {
#ifdef SEGDEPLOY_HAVE_TENSORRT
    return true;
#else
    return false;
#endif
}

Segmenter::Segmenter(const std::filesystem::path& bundle_dir, BackendKind backend, const Options& options)
    : kind_(backend) {
    // Checked before the bundle: without TensorRT no bundle can run on it.
    if (backend == BackendKind::TensorRT && !has_tensorrt())
        throw Error(kExitMissingDependency,
                    "this build has no TensorRT backend: rebuild with TensorRT 10/11 and CUDA where CMake finds them");
    manifest_ = load_manifest(bundle_dir);
#ifdef SEGDEPLOY_HAVE_TENSORRT
    if (backend == BackendKind::TensorRT) {
        backend_ = detail::make_trt_backend(manifest_, options);
        return;
    }
#endif
    backend_ = detail::make_ort_backend(manifest_, options);
}

Segmenter::~Segmenter() = default;
Segmenter::Segmenter(Segmenter&&) noexcept = default;
Segmenter& Segmenter::operator=(Segmenter&&) noexcept = default;

cv::Size Segmenter::run_size(cv::Size frame) const {
    const InputSpec& in = manifest_.input;
    const int64_t unbounded = std::numeric_limits<int>::max();
    auto pick = [&](int64_t x, int axis, bool dynamic, const char* name) -> int64_t {
        if (!dynamic) return in.shape[axis];
        int64_t lo = in.min_size, hi = unbounded;
        if (kind_ == BackendKind::TensorRT && in.tensorrt_profile) {
            lo = std::max(lo, in.tensorrt_profile->min[axis]);
            hi = std::min(hi, in.tensorrt_profile->max[axis]);
        }
        return nearest_valid(x, in.size_multiple, lo, hi, name);
    };
    return {static_cast<int>(pick(frame.width, in.width_axis(), in.dynamic_width, "width")),
            static_cast<int>(pick(frame.height, in.height_axis(), in.dynamic_height, "height"))};
}

Tensor Segmenter::preprocess(const cv::Mat& frame, cv::Size size) const {
    const InputSpec& in = manifest_.input;
    if (frame.empty()) throw Error(kExitBadInput, "empty frame");
    if (frame.depth() != CV_8U || (frame.channels() != 1 && frame.channels() != 3 && frame.channels() != 4))
        throw Error(kExitBadInput, "frames must be 8-bit grey, BGR or BGRA images");
    const int channels = static_cast<int>(in.channels());

    cv::Mat image = frame;
    const int code = convert_code(frame.channels(), channels, in.color == "rgb");
    if (code >= 0) cv::cvtColor(frame, image, code);
    if (image.size() != size) cv::resize(image, image, size, 0, 0, cv::INTER_LINEAR);
    if (!image.isContinuous()) image = image.clone();

    int64_t batch = in.dynamic_batch ? 1 : in.shape[0];
    if (in.dynamic_batch && kind_ == BackendKind::TensorRT && in.tensorrt_profile)
        batch = std::max<int64_t>(1, in.tensorrt_profile->min[0]);
    std::vector<int64_t> shape(4);
    shape[0] = batch;
    shape[in.channel_axis()] = channels;
    shape[in.height_axis()] = size.height;
    shape[in.width_axis()] = size.width;
    Tensor tensor(in.dtype, shape);

    const std::size_t pixels = static_cast<std::size_t>(size.area());
    const std::size_t item = pixels * channels;  // elements per batch item
    const bool nhwc = in.layout == "NHWC";
    const unsigned char* src = image.ptr<unsigned char>();
    // Element index within one item for pixel p, channel c.
    auto index = [&](std::size_t p, int c) { return nhwc ? p * channels + c : c * pixels + p; };
    if (in.dtype == DType::UInt8) {
        auto* dst = tensor.as<uint8_t>();
        if (nhwc) std::memcpy(dst, src, item);
        else
            for (std::size_t p = 0; p < pixels; ++p)
                for (int c = 0; c < channels; ++c) dst[index(p, c)] = src[p * channels + c];
    } else {
        auto* dst = tensor.as<float>();
        for (std::size_t p = 0; p < pixels; ++p)
            for (int c = 0; c < channels; ++c) {
                float v = static_cast<float>(src[p * channels + c]);
                // Same float32 operations, in the same order, as (x / 255 - mean) / std in NumPy or PyTorch.
                if (!in.normalization_fused) v = (v / 255.0f - in.mean[c]) / in.std[c];
                dst[index(p, c)] = v;
            }
    }
    const std::size_t item_bytes = item * dtype_size(in.dtype);
    for (int64_t b = 1; b < batch; ++b)
        std::memcpy(tensor.data.data() + b * item_bytes, tensor.data.data(), item_bytes);
    return tensor;
}

Tensor Segmenter::run(const Tensor& input) {
    const InputSpec& in = manifest_.input;
    if (input.dtype != in.dtype || input.shape.size() != 4 || input.shape[in.channel_axis()] != in.channels())
        throw Error(kExitBadInput, "input " + dtype_name(input.dtype) + " " + format_shape(input.shape) +
                                       " does not fit the model's " + dtype_name(in.dtype) + " " + in.layout + " " +
                                       format_shape(in.shape));
    return backend_->run(input);
}

cv::Mat Segmenter::classmap(const Tensor& output) const {
    const OutputSpec& out = manifest_.output;
    const auto& s = output.shape;
    auto bad_shape = [&]() {
        return Error(kExitBadInput, "model output " + format_shape(s) + " does not match output kind '" + out.kind +
                                        "' (" + out.layout + ")");
    };
    if (out.kind == "classmap") {
        // NHW, or NCHW with C == 1
        if (!(s.size() == 3 || (s.size() == 4 && s[1] == 1)) || s[0] < 1) throw bad_shape();
        const int h = static_cast<int>(s[s.size() - 2]), w = static_cast<int>(s[s.size() - 1]);
        cv::Mat map(h, w, CV_32S);
        auto* dst = map.ptr<int32_t>();
        for (std::size_t i = 0; i < static_cast<std::size_t>(h) * w; ++i) dst[i] = static_cast<int32_t>(output.at(i));
        return map;
    }
    if (s.size() != 4 || s[0] < 1 || s[1] < 1 || output.dtype != DType::Float32) throw bad_shape();
    const int64_t channels = s[1];
    const int h = static_cast<int>(s[2]), w = static_cast<int>(s[3]);
    const std::size_t pixels = static_cast<std::size_t>(h) * w;
    const float* scores = output.as<float>();
    cv::Mat map(h, w, CV_32S);
    auto* dst = map.ptr<int32_t>();
    if (channels == 1) {
        const float threshold = out.kind == "probs" ? 0.5f : 0.0f;
        for (std::size_t p = 0; p < pixels; ++p) dst[p] = scores[p] > threshold ? 1 : 0;
        return map;
    }
    for (std::size_t p = 0; p < pixels; ++p) {
        int32_t best = 0;  // first maximum wins, as in NumPy and PyTorch argmax
        float best_score = scores[p];
        for (int64_t c = 1; c < channels; ++c) {
            const float v = scores[c * pixels + p];
            if (v > best_score) best_score = v, best = static_cast<int32_t>(c);
        }
        dst[p] = best;
    }
    return map;
}

cv::Mat Segmenter::segment(const cv::Mat& frame) {
    if (frame.empty()) throw Error(kExitBadInput, "empty frame");
    const cv::Size size = run_size(frame.size());
    cv::Mat map = classmap(run(preprocess(frame, size)));
    if (map.size() != frame.size()) cv::resize(map, map, frame.size(), 0, 0, cv::INTER_NEAREST);
    return map;
}

cv::Mat Segmenter::colorize(const cv::Mat& classmap) const {
    CV_Assert(classmap.type() == CV_32S);
    cv::Mat image(classmap.size(), CV_8UC3, cv::Scalar(0, 0, 0));
    const auto& palette = manifest_.palette;
    for (int y = 0; y < classmap.rows; ++y) {
        const auto* row = classmap.ptr<int32_t>(y);
        auto* px = image.ptr<cv::Vec3b>(y);
        for (int x = 0; x < classmap.cols; ++x) {
            const int32_t c = row[x];
            if (c >= 0 && static_cast<std::size_t>(c) < palette.size())
                px[x] = cv::Vec3b(palette[c][2], palette[c][1], palette[c][0]);  // RGB palette, BGR image
        }
    }
    return image;
}

GoldenResult Segmenter::check_golden() {
    const Tensor input = read_npy(manifest_.resolve(manifest_.golden_input));
    const Tensor golden = read_npy(manifest_.resolve(manifest_.golden_output));
    const Tensor got = run(input);
    GoldenResult result;
    std::ostringstream text;
    if (got.shape != golden.shape) {
        text << "output shape " << format_shape(got.shape) << " differs from golden " << format_shape(golden.shape);
        result.summary = text.str();
        return result;
    }
    const std::size_t n = got.count();
    if (manifest_.output.kind == "classmap") {
        std::size_t differ = 0;
        for (std::size_t i = 0; i < n; ++i) differ += got.at(i) != golden.at(i);
        const double limit = 0.001;
        result.passed = static_cast<double>(differ) <= limit * static_cast<double>(n);
        text << differ << " of " << n << " class-map pixels differ (" << 100.0 * differ / std::max<std::size_t>(n, 1)
             << "%, limit 0.1%)";
    } else {
        double max_diff = 0.0, max_ref = 0.0;
        bool finite = true;
        for (std::size_t i = 0; i < n; ++i) {
            const double a = got.at(i), b = golden.at(i);
            finite = finite && std::isfinite(a) && std::isfinite(b);
            max_diff = std::max(max_diff, std::abs(a - b));
            max_ref = std::max(max_ref, std::abs(b));
        }
        const double limit = 1e-4 * max_ref + 1e-6;
        result.passed = finite && max_diff <= limit;
        text << "max|out - golden| = " << max_diff << ", limit " << limit
             << " (1e-4 * max|golden| + 1e-6, max|golden| = " << max_ref << ")"
             << (finite ? "" : ", non-finite values");
    }
    result.summary = text.str();
    return result;
}

}  // namespace segdeploy
