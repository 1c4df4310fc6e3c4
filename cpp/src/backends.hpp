// The runtime side of a Segmenter: ONNX Runtime or TensorRT behind one interface of "lanes".
//
// A lane is one set of persistent host buffers (pinned on TensorRT): the input the frames are preprocessed into and
// the output read back. Two lanes let a producer thread fill one while the other runs. Buffers are allocated when a
// shape needs more bytes than a lane holds and reused otherwise, so a stream of same-sized frames allocates nothing
// after the first. Each backend lives in its own translation unit, so the ONNX Runtime path compiles without any
// CUDA or TensorRT header, and trt_backend.cpp only when CMake finds TensorRT and CUDA.
#pragma once

#include <memory>
#include <string>

#include "segdeploy/segmenter.hpp"

namespace segdeploy::detail {

// A host tensor owned by a backend lane, valid until the lane's next input() or submit().
struct HostView {
    DType dtype = DType::Float32;
    Shape shape;
    const void* data = nullptr;
};

class Backend {
public:
    virtual ~Backend() = default;

    static constexpr int kLanes = 2;

    // How many submitted lanes may be running at once: 1 unless the runtime runs asynchronously on more than one
    // execution context (TensorRT).
    virtual int max_in_flight() const = 0;

    // Whether submit() returns only when the run is done (ONNX Runtime): the lane's output may then be read by
    // another thread right away.
    virtual bool synchronous() const { return false; }

    // The lane's host input buffer for `shape` (the manifest's dtype and layout), grown when the shape needs more.
    // May be called from a producer thread while another lane runs.
    virtual void* input(int lane, const Shape& shape) = 0;

    // Starts running the lane's input (synchronous on ONNX Runtime).
    virtual void submit(int lane) = 0;

    // Waits for a submitted lane; its output (the manifest's output tensor, linear, scores as float32) and the
    // milliseconds the runtime took.
    virtual HostView wait(int lane, double* model_ms) = 0;

    virtual std::string describe() const = 0;  // "onnxruntime 1.32.0", for messages

    // The plan's precision ("fp32", "fp16", "int8", "int8-fp16"): how far from the golden output (ONNX Runtime's)
    // this backend may be. "fp32" on ONNX Runtime, which made the golden output from the same file.
    virtual std::string precision() const { return "fp32"; }

    // The batch sizes the runtime takes, [lo, hi] (TensorRT: the plan's optimization profile).
    virtual std::pair<int64_t, int64_t> batch_range() const { return {1, INT64_MAX}; }

    // The spatial range the runtime takes per side, [lo, hi] (TensorRT: the plan's optimization profile).
    virtual std::pair<int64_t, int64_t> side_range(bool height) const {
        (void)height;
        return {1, INT64_MAX};
    }
};

std::unique_ptr<Backend> make_ort_backend(const Manifest& manifest, const Options& options);
std::string ort_version();

#ifdef SEGDEPLOY_HAVE_TENSORRT
std::unique_ptr<Backend> make_trt_backend(const Manifest& manifest, const Options& options);
std::string trt_version();
#endif

// Marks the calls into third-party code (the runtime's inference, OpenCV's resize and color conversion) on this
// thread, so that a test can tell the allocations made by segdeploy's own code from theirs.
enum class ExternalCall { None = 0, OpenCV = 1, Runtime = 2 };

class ExternalScope {
public:
    explicit ExternalScope(ExternalCall kind) noexcept;
    ~ExternalScope();
    ExternalScope(const ExternalScope&) = delete;
    ExternalScope& operator=(const ExternalScope&) = delete;

private:
    ExternalCall saved_;
};

ExternalCall current_external_call() noexcept;

}  // namespace segdeploy::detail
