// TensorRT backend (TensorRT 10.x and 11.x C++ API, CUDA runtime API). Compiled only when CMake finds both.
//
// The flow (NVIDIA's runtime tutorial; "Working with Dynamic Shapes"): createInferRuntime -> deserializeCudaEngine
// -> createExecutionContext -> setInputShape -> getTensorShape(outputs) -> setTensorAddress -> enqueueV3(stream).
// What it relies on, from the public headers (NvInferRuntime.h, NvInferRuntimeBase.h, NvInferPlugin.h):
//  - ILogger::log may be called from several threads at once: the logger locks.
//  - A call can fail by logging kERROR and still return a usable-looking value (createInferRuntime returns a
//    non-null runtime when CUDA is unusable): every call made here counts the errors it logged as its failure.
//  - setInputShape, setTensorAddress, setOptimizationProfileAsync and enqueueV3 return false on failure.
//  - A plan may store tensors in vectorized or channel-last formats (getTensorFormat, getTensorVectorizedDim,
//    getTensorComponentsPerElement): buffers are sized with the padding and outputs read back in that layout.
//  - "If the engine supports dynamic shapes, each execution context in concurrent use must use a separate
//    optimization profile": a plan with dynamic shapes gets a second context only if it has a second profile
//    equal to the first; a static plan always can have two.
//  - Plans with plugin layers need initLibNvInferPlugins (libnvinfer_plugin) before deserializing: the library is
//    loaded with dlopen when present, once per process.
//  - Objects are destroyed in reverse order of creation (contexts, engine, runtime), after their streams finished.
// A plan loads only on the TensorRT release that built it and on the same compute capability, so the manifest's
// `engine` record is checked first and a mismatch is refused with one line instead of TensorRT's own errors.
#include <dlfcn.h>

#include <array>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>

#include <NvInferPlugin.h>
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include "backends.hpp"
#include "trt_io.hpp"

namespace segdeploy::detail {

namespace {

using nvinfer1::ILogger;

// Thread-safe; keeps the errors logged since begin() so that each call can be judged by them.
class Logger : public ILogger {
public:
    explicit Logger(bool verbose) : verbose_(verbose) {}
    void log(Severity severity, const char* msg) noexcept override {
        std::lock_guard<std::mutex> lock(mutex_);
        const char* text = msg ? msg : "";
        if (verbose_ && severity <= Severity::kINFO) std::cerr << "TensorRT: " << text << '\n';
        if (severity <= Severity::kERROR) {
            try {
                if (!errors_.empty()) errors_ += "; ";
                errors_ += text;
                ++count_;
            } catch (...) {  // no memory for the text: the count still says it failed
                ++count_;
            }
        }
    }
    void begin() {
        std::lock_guard<std::mutex> lock(mutex_);
        errors_.clear();
        count_ = 0;
    }
    bool failed() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return count_ > 0;
    }
    std::string errors() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return count_ == 0 ? "no error logged" : first_line(errors_);
    }

private:
    const bool verbose_;
    mutable std::mutex mutex_;
    std::string errors_;
    int count_ = 0;
};

std::string cuda_reason(cudaError_t status) {
    return std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
}

void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw Error(kExitError, std::string("CUDA ") + what + " failed (" + cuda_reason(status) + ")");
}

class CudaStream {
public:
    CudaStream() { check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"); }
    ~CudaStream() {
        if (stream_) cudaStreamDestroy(stream_);
    }
    CudaStream(const CudaStream&) = delete;
    CudaStream& operator=(const CudaStream&) = delete;
    cudaStream_t get() const { return stream_; }

private:
    cudaStream_t stream_ = nullptr;
};

class CudaEvent {
public:
    CudaEvent() { check_cuda(cudaEventCreate(&event_), "cudaEventCreate"); }
    ~CudaEvent() {
        if (event_) cudaEventDestroy(event_);
    }
    CudaEvent(const CudaEvent&) = delete;
    CudaEvent& operator=(const CudaEvent&) = delete;
    cudaEvent_t get() const { return event_; }

private:
    cudaEvent_t event_ = nullptr;
};

// Device or pinned host memory that grows to the largest size asked for and is otherwise reused.
template <bool kPinned>
class Buffer {
public:
    Buffer() = default;
    ~Buffer() { release(); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    // True when the memory moved (a new address to bind).
    bool reserve(std::size_t bytes) {
        if (ptr_ && bytes <= bytes_) return false;
        release();
        const std::size_t size = bytes ? bytes : 1;
        if (kPinned) check_cuda(cudaHostAlloc(&ptr_, size, cudaHostAllocDefault), "cudaHostAlloc");
        else check_cuda(cudaMalloc(&ptr_, size), "cudaMalloc");
        bytes_ = size;
        return true;
    }
    void* get() const { return ptr_; }

private:
    void release() {
        if (!ptr_) return;
        if (kPinned) cudaFreeHost(ptr_);
        else cudaFree(ptr_);
        ptr_ = nullptr;
        bytes_ = 0;
    }
    void* ptr_ = nullptr;
    std::size_t bytes_ = 0;
};
using DeviceBuffer = Buffer<false>;
using PinnedBuffer = Buffer<true>;

template <typename T>
using TrtPtr = std::unique_ptr<T>;  // TensorRT 10+: objects are deleted with delete

std::string library_version() {
    return std::to_string(getInferLibMajorVersion()) + "." + std::to_string(getInferLibMinorVersion()) + "." +
           std::to_string(getInferLibPatchVersion()) + "." + std::to_string(getInferLibBuildVersion());
}

nvinfer1::Dims to_dims(const Shape& shape) {
    nvinfer1::Dims dims{};
    dims.nbDims = shape.rank;
    for (int i = 0; i < shape.rank; ++i) dims.d[i] = shape[i];
    return dims;
}

Shape to_shape(const nvinfer1::Dims& dims) {
    Shape shape;
    shape.rank = std::max(0, std::min<int>(dims.nbDims, Shape::kMaxRank));
    for (int i = 0; i < shape.rank; ++i) shape[i] = dims.d[i];
    return shape;
}

bool elem_of(nvinfer1::DataType type, Elem* out) {
    switch (type) {
        case nvinfer1::DataType::kFLOAT: *out = Elem::F32; return true;
        case nvinfer1::DataType::kHALF: *out = Elem::F16; return true;
        case nvinfer1::DataType::kINT32: *out = Elem::I32; return true;
        case nvinfer1::DataType::kINT64: *out = Elem::I64; return true;
        case nvinfer1::DataType::kUINT8: *out = Elem::U8; return true;
        default: return false;
    }
}

bool layout_of(nvinfer1::TensorFormat format, Layout* out) {
    switch (format) {
        case nvinfer1::TensorFormat::kLINEAR: *out = Layout::Linear; return true;
        case nvinfer1::TensorFormat::kCHW2:
        case nvinfer1::TensorFormat::kCHW4:
        case nvinfer1::TensorFormat::kCHW16:
        case nvinfer1::TensorFormat::kCHW32: *out = Layout::ChannelVectorized; return true;
        case nvinfer1::TensorFormat::kHWC:
        case nvinfer1::TensorFormat::kHWC8:
        case nvinfer1::TensorFormat::kHWC16: *out = Layout::ChannelLast; return true;
        default: return false;
    }
}

// libnvinfer_plugin, loaded and initialised once per process with a logger that lives as long (the plugin library
// keeps it). Its status goes into the message of a plan that fails to load.
const std::string& plugin_status(bool verbose) {
    static std::once_flag once;
    static std::string status;
    std::call_once(once, [verbose] {
        const std::string name = "libnvinfer_plugin.so." + std::to_string(NV_TENSORRT_MAJOR);
        void* handle = dlopen(name.c_str(), RTLD_LAZY | RTLD_LOCAL);  // never closed: plugins stay registered
        if (!handle) {
            status = name + " not loaded";
            return;
        }
        using Init = decltype(&initLibNvInferPlugins);
        const auto init = reinterpret_cast<Init>(dlsym(handle, "initLibNvInferPlugins"));
        if (!init) {
            status = name + " has no initLibNvInferPlugins";
            return;
        }
        static Logger* logger = new Logger(verbose);  // outlives every use the plugin library makes of it
        logger->begin();
        const bool ok = init(logger, "");
        status = ok && !logger->failed() ? name + " loaded" : name + " failed to initialise: " + logger->errors();
    });
    return status;
}

class TrtBackend : public Backend {
public:
    TrtBackend(const Manifest& manifest, const Options& options)
        : input_name_(manifest.input.name), output_name_(manifest.output.name), logger_(options.verbose) {
        if (!manifest.engine)
            throw Error(kExitBadInput, "the bundle has no TensorRT plan (its manifest's 'engine' is null)");
        const EngineSpec& spec = *manifest.engine;
        const std::string plan_path = manifest.resolve(spec.file).string();
        precision_ = spec.precision.empty() ? manifest.precision : spec.precision;

        int devices = 0;
        const cudaError_t status = cudaGetDeviceCount(&devices);
        if (status != cudaSuccess)
            throw Error(kExitMissingDependency, "CUDA cannot be used for the TensorRT backend (" + cuda_reason(status) + ")");
        if (devices == 0) throw Error(kExitMissingDependency, "no CUDA GPU is available for the TensorRT backend");
        int device = 0;
        check_cuda(cudaGetDevice(&device), "cudaGetDevice");
        cudaDeviceProp prop{};
        check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
        const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
        const std::string why = tensorrt_version_mismatch(spec.tensorrt_version, library_version());
        if (!why.empty())
            throw Error(kExitBadInput, plan_path + ": " + why + ": rebuild the plan here with `segdeploy build`");
        if (spec.compute_capability != cc)
            throw Error(kExitBadInput, plan_path + " was built for compute capability " + spec.compute_capability + " (" +
                                           (spec.gpu_name.empty() ? "another GPU" : spec.gpu_name) + ") but this GPU (" +
                                           prop.name + ") is " + cc + ": rebuild the plan here with `segdeploy build`");

        std::ifstream file(plan_path, std::ios::binary);
        if (!file) throw Error(kExitBadInput, plan_path + " is missing");
        const std::vector<char> plan((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
        const std::string plugins = plugin_status(options.verbose);

        logger_.begin();
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_ || logger_.failed())
            throw Error(kExitError, "TensorRT could not create a runtime: " + logger_.errors());
        logger_.begin();
        engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
        if (!engine_ || logger_.failed())
            throw Error(kExitBadInput, "TensorRT " + library_version() + " cannot load " + plan_path + ": " +
                                           logger_.errors() + " (" + plugins + ")");
        inspect(manifest);
        create_contexts();
    }

    ~TrtBackend() override {
        // Work still queued must finish before its buffers go; then contexts, engine and runtime go in that order.
        for (auto& context : contexts_) cudaStreamSynchronize(context->stream.get());
    }

    int max_in_flight() const override { return static_cast<int>(contexts_.size()); }

    void* input(int l, const Shape& shape) override {
        Lane& lane = *lanes_[static_cast<std::size_t>(l)];
        lane.input.reserve(shape.count() * dtype_size(input_dtype_));
        lane.input_shape = shape;
        return lane.input.get();
    }

    void submit(int l) override {
        Lane& lane = *lanes_[static_cast<std::size_t>(l)];
        lane.context = l % static_cast<int>(contexts_.size());
        Context& c = *contexts_[static_cast<std::size_t>(lane.context)];
        if (lane.input_shape != c.input_shape) bind_shape(c, lane.input_shape);
        lane.output.reserve(c.bytes[main_output_]);
        lane.output_shape = c.shapes[main_output_];
        const std::size_t input_bytes = lane.input_shape.count() * dtype_size(input_dtype_);
        ExternalScope runtime(ExternalCall::Runtime);  // CUDA and TensorRT calls
        check_cuda(cudaEventRecord(lane.start.get(), c.stream.get()), "cudaEventRecord");
        check_cuda(cudaMemcpyAsync(c.buffers[input_index_].get(), lane.input.get(), input_bytes,
                                   cudaMemcpyHostToDevice, c.stream.get()),
                   "cudaMemcpyAsync to the GPU");
        {
            logger_.begin();
            if (!c.context->enqueueV3(c.stream.get()) || logger_.failed())
                throw Error(kExitError, "TensorRT failed to run the plan on input " + format_shape(lane.input_shape) +
                                            ": " + logger_.errors());
        }
        check_cuda(cudaMemcpyAsync(lane.output.get(), c.buffers[main_output_].get(), c.bytes[main_output_],
                                   cudaMemcpyDeviceToHost, c.stream.get()),
                   "cudaMemcpyAsync from the GPU");
        check_cuda(cudaEventRecord(lane.stop.get(), c.stream.get()), "cudaEventRecord");
    }

    HostView wait(int l, double* model_ms) override {
        Lane& lane = *lanes_[static_cast<std::size_t>(l)];
        float ms = 0.0f;
        {
            ExternalScope runtime(ExternalCall::Runtime);
            check_cuda(cudaEventSynchronize(lane.stop.get()), "cudaEventSynchronize");
            check_cuda(cudaEventElapsedTime(&ms, lane.start.get(), lane.stop.get()), "cudaEventElapsedTime");
        }
        *model_ms = ms;
        const IoTensor& out = io_[main_output_];
        if (out.layout == Layout::Linear && out.elem != Elem::F16)
            return HostView{linear_dtype(out.elem), lane.output_shape, lane.output.get()};
        const std::size_t bytes = lane.output_shape.count() * dtype_size(linear_dtype(out.elem));
        if (lane.linear.size() < bytes) lane.linear.resize(bytes);
        to_linear(lane.output.get(), out.elem, out.layout, out.components, lane.output_shape, lane.linear.data());
        return HostView{linear_dtype(out.elem), lane.output_shape, lane.linear.data()};
    }

    std::string describe() const override { return "TensorRT " + library_version(); }
    std::string precision() const override { return precision_; }
    std::pair<int64_t, int64_t> batch_range() const override { return range(0); }
    std::pair<int64_t, int64_t> side_range(bool height) const override { return range(height ? h_axis_ : w_axis_); }

private:
    struct IoTensor {
        std::string name;
        bool input = false;
        bool readable = false;  // the manifest's input or output
        Elem elem = Elem::F32;
        Layout layout = Layout::Linear;
        int vectorized_dim = -1, components = 1;
        std::size_t component_bytes = 4;
    };

    // One execution context, its stream and the device buffers bound to it. Members die bottom-up: the context
    // first, then its buffers, then its stream.
    struct Context {
        CudaStream stream;
        std::vector<DeviceBuffer> buffers;  // per io_ entry
        std::vector<Shape> shapes;          // per io_ entry, for the bound input shape
        std::vector<std::size_t> bytes;     // per io_ entry, padded
        Shape input_shape;                  // rank 0 until bound
        TrtPtr<nvinfer1::IExecutionContext> context;
    };

    struct Lane {
        PinnedBuffer input, output;
        Shape input_shape, output_shape;
        std::vector<unsigned char> linear;  // the output converted to linear float32 / ints
        CudaEvent start, stop;
        int context = 0;
    };

    void inspect(const Manifest& manifest) {
        const nvinfer1::ICudaEngine& e = *engine_;
        bool has_output = false;
        for (int32_t i = 0; i < e.getNbIOTensors(); ++i) {
            IoTensor t;
            t.name = e.getIOTensorName(i);
            const char* name = t.name.c_str();
            t.input = e.getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT;
            t.readable = t.input || t.name == output_name_;
            const bool known_elem = elem_of(e.getTensorDataType(name), &t.elem);
            const bool known_layout = layout_of(e.getTensorFormat(name), &t.layout);
            t.vectorized_dim = e.getTensorVectorizedDim(name);
            t.components = std::max(1, e.getTensorComponentsPerElement(name));
            const int bpc = e.getTensorBytesPerComponent(name);
            t.component_bytes = bpc > 0 ? static_cast<std::size_t>(bpc) : (known_elem ? elem_size(t.elem) : 1);
            const std::string format = e.getTensorFormatDesc(name) ? e.getTensorFormatDesc(name) : "?";
            if (t.input) {
                if (t.name != input_name_)
                    throw Error(kExitBadInput, "the plan has an input '" + t.name + "' the manifest does not describe");
                const Elem want = manifest.input.dtype == DType::UInt8 ? Elem::U8 : Elem::F32;
                if (!known_elem || t.elem != want)
                    throw Error(kExitBadInput, "the plan's input '" + t.name + "' does not take " +
                                                   dtype_name(manifest.input.dtype) + " (the manifest's input dtype)");
                if (!known_layout || t.layout != Layout::Linear)
                    throw Error(kExitBadInput, "the plan's input '" + t.name + "' uses format " + format +
                                                   "; this runtime feeds linear " + manifest.input.layout + " tensors");
                input_index_ = io_.size();
            } else if (t.readable) {
                has_output = true;
                const bool scores = manifest.output.kind != "classmap";
                const bool elem_ok = known_elem && (scores ? (t.elem == Elem::F32 || t.elem == Elem::F16)
                                                           : (t.elem == Elem::I32 || t.elem == Elem::I64 ||
                                                              t.elem == Elem::U8));
                if (!elem_ok)
                    throw Error(kExitBadInput, "the plan's output '" + t.name + "' has a type this runtime cannot read as " +
                                                   manifest.output.kind);
                if (!known_layout || (t.layout != Layout::Linear && e.getTensorShape(name).nbDims != 4))
                    throw Error(kExitBadInput, "the plan's output '" + t.name + "' uses format " + format +
                                                   ", which this runtime cannot read");
                main_output_ = io_.size();
            }
            io_.push_back(t);
        }
        if (input_index_ == kNone || !has_output)
            throw Error(kExitBadInput, "the plan's tensors do not include the manifest's input '" + input_name_ +
                                           "' and output '" + output_name_ + "'");
        input_dtype_ = manifest.input.dtype;
        const bool nhwc = manifest.input.layout == "NHWC";
        h_axis_ = nhwc ? 1 : 2;
        w_axis_ = nhwc ? 2 : 3;
        const nvinfer1::Dims dims = e.getTensorShape(input_name_.c_str());
        for (int i = 0; i < dims.nbDims; ++i) dynamic_ = dynamic_ || dims.d[i] < 0;
        const char* in = input_name_.c_str();
        profile_min_ = to_shape(dynamic_ ? e.getProfileShape(in, 0, nvinfer1::OptProfileSelector::kMIN) : dims);
        profile_max_ = to_shape(dynamic_ ? e.getProfileShape(in, 0, nvinfer1::OptProfileSelector::kMAX) : dims);
        if (profile_min_.rank != 4 || profile_max_.rank != 4)
            throw Error(kExitBadInput, "the plan's input '" + input_name_ + "' is not 4-D");
    }

    std::pair<int64_t, int64_t> range(int axis) const { return {profile_min_[axis], profile_max_[axis]}; }

    // Two contexts when they may run concurrently: a static plan, or a second profile equal to the first.
    void create_contexts() {
        const nvinfer1::ICudaEngine& e = *engine_;
        int count = 2;
        if (dynamic_) {
            count = 1;
            if (e.getNbOptimizationProfiles() >= 2) {
                const char* in = input_name_.c_str();
                using S = nvinfer1::OptProfileSelector;
                const bool same = to_shape(e.getProfileShape(in, 1, S::kMIN)) == profile_min_ &&
                                  to_shape(e.getProfileShape(in, 1, S::kMAX)) == profile_max_;
                if (same) count = 2;
            }
        }
        for (int k = 0; k < count; ++k) {
            auto c = std::make_unique<Context>();
            logger_.begin();
            c->context.reset(engine_->createExecutionContext());
            if (!c->context || logger_.failed())
                throw Error(kExitError, "TensorRT could not create an execution context: " + logger_.errors());
            if (dynamic_ && k > 0) {
                logger_.begin();
                if (!c->context->setOptimizationProfileAsync(k, c->stream.get()) || logger_.failed())
                    throw Error(kExitError, "TensorRT refused optimization profile " + std::to_string(k) + ": " +
                                                logger_.errors());
                check_cuda(cudaStreamSynchronize(c->stream.get()), "cudaStreamSynchronize");
            }
            c->buffers = std::vector<DeviceBuffer>(io_.size());
            c->shapes.resize(io_.size());
            c->bytes.resize(io_.size());
            contexts_.push_back(std::move(c));
        }
        for (auto& lane : lanes_) lane = std::make_unique<Lane>();
    }

    void set_address(Context& c, std::size_t i) {
        logger_.begin();
        if (!c.context->setTensorAddress(io_[i].name.c_str(), c.buffers[i].get()) || logger_.failed())
            throw Error(kExitError, "TensorRT refused the address of tensor '" + io_[i].name + "': " + logger_.errors());
    }

    // A new input shape on a context: set it, size every output, and bind buffers that moved. The same shape
    // again later costs nothing.
    void bind_shape(Context& c, const Shape& shape) {
        logger_.begin();
        if (!c.context->setInputShape(input_name_.c_str(), to_dims(shape)) || logger_.failed())
            throw Error(kExitBadInput, "TensorRT refused input shape " + format_shape(shape) + " (the plan takes " +
                                           format_shape(profile_min_) + " to " + format_shape(profile_max_) +
                                           "): " + logger_.errors());
        for (std::size_t i = 0; i < io_.size(); ++i) {
            const IoTensor& t = io_[i];
            const Shape s = t.input ? shape : to_shape(c.context->getTensorShape(t.name.c_str()));
            for (int d = 0; d < s.rank; ++d)
                if (s[d] < 0) throw Error(kExitError, "TensorRT could not infer the shape of output '" + t.name + "'");
            c.shapes[i] = s;
            c.bytes[i] = padded_elements(s, t.vectorized_dim, t.components) * t.component_bytes;
            if (c.buffers[i].reserve(c.bytes[i]) || c.input_shape.rank == 0) set_address(c, i);
        }
        c.input_shape = shape;
    }

    static constexpr std::size_t kNone = static_cast<std::size_t>(-1);

    std::string input_name_, output_name_, precision_;
    DType input_dtype_ = DType::Float32;
    std::vector<IoTensor> io_;
    std::size_t input_index_ = kNone, main_output_ = kNone;
    bool dynamic_ = false;
    Shape profile_min_, profile_max_;
    int h_axis_ = 2, w_axis_ = 3;
    // Destroyed bottom-up: lanes (pinned buffers, events), contexts, engine, runtime, and the logger they use.
    Logger logger_;
    TrtPtr<nvinfer1::IRuntime> runtime_;
    TrtPtr<nvinfer1::ICudaEngine> engine_;
    std::vector<std::unique_ptr<Context>> contexts_;
    std::array<std::unique_ptr<Lane>, Backend::kLanes> lanes_;  // made once CUDA is known to work
};

}  // namespace

std::string trt_version() { return library_version(); }

std::unique_ptr<Backend> make_trt_backend(const Manifest& manifest, const Options& options) {
    return std::make_unique<TrtBackend>(manifest, options);
}

}  // namespace segdeploy::detail
