#include "segdeploy/segmenter.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "segmenter_impl.hpp"

namespace segdeploy {

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

Percentiles percentiles(std::vector<double> values) {
    Percentiles p;
    if (values.empty()) return p;
    std::sort(values.begin(), values.end());
    auto at = [&](double q) {
        const double pos = q / 100.0 * static_cast<double>(values.size() - 1);
        const auto lo = static_cast<std::size_t>(pos);
        const std::size_t hi = std::min(lo + 1, values.size() - 1);
        return values[lo] + (values[hi] - values[lo]) * (pos - static_cast<double>(lo));
    };
    p.p50 = at(50);
    p.p90 = at(90);
    p.p99 = at(99);
    return p;
}

Segmenter::Segmenter(const std::filesystem::path& bundle_dir, BackendKind backend, const Options& options)
    : impl_(std::make_unique<Impl>()) {
    // Checked before the bundle: without TensorRT no bundle can run on it.
    if (backend == BackendKind::TensorRT && !has_tensorrt())
        throw Error(kExitMissingDependency,
                    "this build has no TensorRT backend: rebuild with TensorRT 10/11 and CUDA where CMake finds them");
    if (options.max_pixels < 1) throw Error(kExitBadInput, "the pixel limit must be >= 1");
    impl_->kind = backend;
    impl_->options = options;
    impl_->manifest = load_manifest(bundle_dir);
#ifdef SEGDEPLOY_HAVE_TENSORRT
    if (backend == BackendKind::TensorRT) {
        impl_->backend = detail::make_trt_backend(impl_->manifest, options);
        return;
    }
#endif
    impl_->backend = detail::make_ort_backend(impl_->manifest, options);
}

Segmenter::~Segmenter() = default;
Segmenter::Segmenter(Segmenter&&) noexcept = default;
Segmenter& Segmenter::operator=(Segmenter&&) noexcept = default;

const Manifest& Segmenter::manifest() const { return impl_->manifest; }
std::string Segmenter::backend_description() const { return impl_->backend->describe(); }
cv::Size Segmenter::run_size(cv::Size frame) const { return impl_->run_size(frame); }
int64_t Segmenter::max_batch() const { return impl_->max_batch(); }

FrameTiming Segmenter::run(const cv::Mat& frame, cv::Mat& classmap) { return impl_->run_frames(&frame, 1, &classmap); }

FrameTiming Segmenter::run(const std::vector<cv::Mat>& frames, std::vector<cv::Mat>& classmaps) {
    classmaps.resize(frames.size());
    return impl_->run_frames(frames.data(), static_cast<int64_t>(frames.size()), classmaps.data());
}

cv::Mat Segmenter::segment(const cv::Mat& frame) {
    cv::Mat classmap;
    run(frame, classmap);
    return classmap;
}

std::vector<cv::Mat> Segmenter::segment(const std::vector<cv::Mat>& frames) {
    std::vector<cv::Mat> classmaps;
    run(frames, classmaps);
    return classmaps;
}

Tensor Segmenter::preprocess(const cv::Mat& frame, cv::Size size) const {
    detail::check_frame(frame, impl_->options.max_pixels);
    const FramePipeline& p = impl_->manifest.pipeline;
    const Shape shape = detail::input_shape(p, p.fixed_batch ? *p.fixed_batch : 1, size);
    Tensor tensor(p.dtype, shape.vec());
    detail::FrameScratch scratch;
    detail::write_input_item(p, frame, shape, 0, scratch, tensor.data.data());
    for (int64_t i = 1; i < shape[0]; ++i) detail::copy_input_item(p, shape, 0, i, tensor.data.data());
    return tensor;
}

Tensor Segmenter::run(const Tensor& input) {
    const FramePipeline& p = impl_->manifest.pipeline;
    const InputSpec& in = impl_->manifest.input;
    if (input.dtype != p.dtype || input.shape.size() != 4 || input.shape[in.channel_axis()] != p.channels)
        throw Error(kExitBadInput, "input " + dtype_name(input.dtype) + " " + format_shape(input.shape) +
                                       " does not fit the model's " + dtype_name(p.dtype) + " " + p.layout + " " +
                                       format_shape(in.shape));
    const Shape shape(input.shape);
    std::memcpy(impl_->backend->input(0, shape), input.data.data(), input.bytes());
    impl_->backend->submit(0);
    double model_ms = 0.0;
    const detail::HostView out = impl_->backend->wait(0, &model_ms);
    Tensor result(out.dtype, out.shape.vec());
    std::memcpy(result.data.data(), out.data, result.bytes());
    return result;
}

cv::Mat Segmenter::classmap(const Tensor& output, int64_t item) const {
    detail::HostView view{output.dtype, Shape(output.shape), output.data.data()};
    cv::Mat map;
    std::vector<float> best;
    detail::output_classmap(impl_->manifest.pipeline, view, item, map, best);
    return map;
}

cv::Mat Segmenter::colorize(const cv::Mat& classmap) const {
    cv::Mat bgr;
    colorize(classmap, bgr);
    return bgr;
}

void Segmenter::colorize(const cv::Mat& classmap, cv::Mat& bgr, const cv::Mat* frame, double alpha) const {
    detail::paint(classmap, impl_->manifest.palette, bgr, frame, alpha);
}

}  // namespace segdeploy
