// segdeploy::Segmenter: load a bundle, run frames, get class maps.
//
//   segdeploy::Segmenter seg("unet_bundle");               // ONNX Runtime on the CPU
//   cv::Mat classes = seg.segment(cv::imread("frame.png"));  // CV_32S, same size as the frame
//   cv::imwrite("mask.png", seg.colorize(classes));
//
// Frames become inputs and outputs class maps as the bundle manifest's `pipeline` says (see manifest.hpp). Input
// and output buffers are allocated once per shape and reused: `run(frame, classmap)` on frames of one size
// allocates nothing after the first call.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "segdeploy/error.hpp"
#include "segdeploy/manifest.hpp"
#include "segdeploy/tensor.hpp"

namespace segdeploy {

enum class BackendKind { OnnxRuntime, TensorRT };

BackendKind backend_from_name(const std::string& name);  // "ort" or "trt"; throws Error(kExitBadInput)

// The runtimes this build can use, e.g. "onnxruntime 1.32.0; TensorRT: not built".
std::string runtime_versions();

// 8K UHD, 7680x4320: the default bound on a frame's pixels.
constexpr int64_t kDefaultMaxPixels = 7680LL * 4320LL;

struct Options {
    int threads = 0;                          // ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose
    bool verbose = false;                     // let the runtimes print their messages on stderr
    int64_t max_pixels = kDefaultMaxPixels;   // frames with more pixels are refused (kExitBadInput)
};

struct GoldenResult {
    bool passed = false;
    std::string summary;  // the compared numbers and the rule, one line
};

// Milliseconds spent on one frame (for a batch, on the whole batch).
struct FrameTiming {
    double model_ms = 0.0;  // the runtime's share (TensorRT: copies and inference on the GPU)
    double total_ms = 0.0;  // end to end: from reading the frame (run_stream) or preprocessing (run) to its class map
};

struct Percentiles {
    double p50 = 0.0, p90 = 0.0, p99 = 0.0;  // linear interpolation, as numpy.percentile
};

Percentiles percentiles(std::vector<double> values);

struct StreamStats {
    int64_t frames = 0;
    double seconds = 0.0;  // wall time of the whole stream
    double fps = 0.0;
    Percentiles model_ms, total_ms;  // per frame (a batch's time counts for each of its frames)
};

// Fills `frame` with the next frame (8-bit grey, BGR or BGRA); false at the end of the stream. Reusing the Mat
// lets decoders write into the same buffer.
using FrameSource = std::function<bool(cv::Mat& frame)>;

struct StreamFrame {
    int64_t index;             // 0, 1, 2... in source order
    const cv::Mat& frame;      // as the source gave it
    const cv::Mat& classmap;   // CV_32S at the frame's size
    FrameTiming timing;
};

// Receives each frame's result, in source order, one call at a time: on the calling thread, except in a pipelined
// stream on ONNX Runtime, where the worker thread that reads the source also finishes each run and calls the sink.
using FrameSink = std::function<void(const StreamFrame& result)>;

struct StreamOptions {
    int batch = 1;          // frames per run through the engine's batch dimension (consecutive frames of one size)
    bool pipelined = true;  // decode and preprocess frame n+1 on a worker thread while frame n runs
};

class Segmenter {
public:
    // Loads the manifest and the model for `backend`. Throws Error (see error.hpp for the codes).
    explicit Segmenter(const std::filesystem::path& bundle_dir, BackendKind backend = BackendKind::OnnxRuntime,
                       const Options& options = {});
    ~Segmenter();
    Segmenter(Segmenter&&) noexcept;
    Segmenter& operator=(Segmenter&&) noexcept;

    const Manifest& manifest() const;
    const FramePipeline& pipeline() const { return manifest().pipeline; }
    std::string backend_description() const;

    // The size the model runs at for a frame of `frame` size: the pipeline's fixed size, else each side rounded to
    // the nearest valid size (halves up) within [min_size, max_size] (and, on TensorRT, the plan's profile).
    cv::Size run_size(cv::Size frame) const;

    // The largest number of frames one run takes: the fixed batch, or the plan profile's largest batch.
    int64_t max_batch() const;

    // One frame (8-bit grey, BGR or BGRA) to its class map at the frame's size (CV_32S), written into `classmap`
    // (reallocated only when its size or type differs). Throws Error(kExitBadInput) for a frame above
    // Options::max_pixels before allocating anything for it.
    FrameTiming run(const cv::Mat& frame, cv::Mat& classmap);

    // A batch of frames of one size through the engine's batch dimension (split into runs of at most max_batch();
    // a fixed batch is filled up by repeating the last frame). One class map per frame.
    FrameTiming run(const std::vector<cv::Mat>& frames, std::vector<cv::Mat>& classmaps);

    // The same, returning new class maps.
    cv::Mat segment(const cv::Mat& frame);
    std::vector<cv::Mat> segment(const std::vector<cv::Mat>& frames);

    // Runs every frame of `source` and hands each result to `sink` in order. Pipelined (the default): a worker
    // thread reads and preprocesses frame n+1 while frame n runs (on TensorRT with two execution contexts and
    // streams when the plan allows concurrent contexts; on ONNX Runtime the worker also makes the class maps of
    // frame n-1 and calls the sink, so the calling thread only runs the model). Errors from either side are
    // rethrown here.
    StreamStats run_stream(const FrameSource& source, const FrameSink& sink, const StreamOptions& options = {});

    // Finer steps, for debugging a pipeline (these allocate):
    // the input tensor for one frame at `size` (a fixed batch repeats the frame);
    Tensor preprocess(const cv::Mat& frame, cv::Size size) const;
    // the model on a tensor shaped and typed as the manifest's input;
    Tensor run(const Tensor& input);
    // the class map of batch item `item` of an output tensor, at the output's size (CV_32S).
    cv::Mat classmap(const Tensor& output, int64_t item = 0) const;

    // A BGR image (CV_8UC3) of a class map in the manifest's palette; classes outside it are black. With `frame`
    // and alpha < 1, the palette is blended over the frame: alpha * color + (1 - alpha) * frame.
    cv::Mat colorize(const cv::Mat& classmap) const;
    void colorize(const cv::Mat& classmap, cv::Mat& bgr, const cv::Mat* frame = nullptr, double alpha = 1.0) const;

    // Runs golden/input.npy and compares with golden/output.npy. ONNX Runtime and FP32 plans: a float output passes
    // when max|a-b| <= 1e-4 * max|b| + 1e-6, a class map when at most 0.1% of the pixels differ. FP16 plans:
    // max|a-b| <= 1e-2 * max|b| and 99% argmax agreement; INT8 plans: p99|a-b| <= 0.25 * max|b| and 80% agreement
    // (segdeploy's verification criteria for those precisions).
    GoldenResult check_golden();

    static bool has_tensorrt();  // compiled with the TensorRT backend

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace segdeploy
