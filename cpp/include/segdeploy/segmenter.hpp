// segdeploy::Segmenter: load a bundle, run a frame, get a class map.
//
//   segdeploy::Segmenter seg("unet_bundle");               // ONNX Runtime on the CPU
//   cv::Mat classes = seg.segment(cv::imread("frame.png"));  // CV_32S, same size as the frame
//   cv::imwrite("mask.png", seg.colorize(classes));
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <opencv2/core.hpp>

#include "segdeploy/error.hpp"
#include "segdeploy/manifest.hpp"
#include "segdeploy/tensor.hpp"

namespace segdeploy {

enum class BackendKind { OnnxRuntime, TensorRT };

BackendKind backend_from_name(const std::string& name);  // "ort" or "trt"; throws Error(kExitBadInput)

// The runtimes this build can use, e.g. "onnxruntime 1.32.0; TensorRT: not built".
std::string runtime_versions();

struct Options {
    int threads = 0;       // ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose
    bool verbose = false;  // let the runtimes print their warnings on stderr
};

struct GoldenResult {
    bool passed = false;
    std::string summary;  // the compared numbers, one line
};

// The engine-agnostic part of a backend, implemented by ONNX Runtime and TensorRT.
class Backend {
public:
    virtual ~Backend() = default;
    virtual Tensor run(const Tensor& input) = 0;  // input in the manifest's dtype and layout
    virtual std::string describe() const = 0;     // "onnxruntime 1.32.0", for messages
};

class Segmenter {
public:
    // Loads the manifest and the model for `backend`. Throws Error (see error.hpp for the codes).
    explicit Segmenter(const std::filesystem::path& bundle_dir, BackendKind backend = BackendKind::OnnxRuntime,
                       const Options& options = {});
    ~Segmenter();
    Segmenter(Segmenter&&) noexcept;
    Segmenter& operator=(Segmenter&&) noexcept;

    const Manifest& manifest() const { return manifest_; }
    std::string backend_description() const { return backend_->describe(); }

    // The size the model runs at for a frame of `frame` size: the frame's own size when the model accepts it
    // (size_multiple, min_size, fixed axes, the TensorRT profile), else the nearest size it accepts.
    cv::Size run_size(cv::Size frame) const;

    // The input tensor for a frame (BGR, grey or BGRA, 8-bit): color order, resize to `size`, layout, dtype and
    // normalization as the manifest says; a fixed batch > 1 repeats the frame.
    Tensor preprocess(const cv::Mat& frame, cv::Size size) const;

    // Runs the model on a tensor shaped and typed as the manifest's input.
    Tensor run(const Tensor& input);

    // The class map of batch item 0 of an output tensor: argmax for logits/probs (a 1-class model thresholds),
    // the values themselves for a class-map output. CV_32S at the output's size.
    cv::Mat classmap(const Tensor& output) const;

    // All of the above: the class map at the frame's size (nearest-neighbour resize when the model ran at
    // another size). CV_32S.
    cv::Mat segment(const cv::Mat& frame);

    // A BGR image (CV_8UC3) of a class map in the manifest's palette; classes outside it are black.
    cv::Mat colorize(const cv::Mat& classmap) const;

    // Runs golden/input.npy and compares with golden/output.npy: a float output passes when
    // max|a-b| <= 1e-4 * max|b| + 1e-6, a class map when at most 0.1% of the pixels differ.
    GoldenResult check_golden();

    static bool has_tensorrt();  // compiled with the TensorRT backend

private:
    Manifest manifest_;
    BackendKind kind_;
    std::unique_ptr<Backend> backend_;
};

}  // namespace segdeploy
