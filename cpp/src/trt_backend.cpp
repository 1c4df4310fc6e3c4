// TensorRT backend (TensorRT 10.x and 11.x C++ API, CUDA runtime API). Compiled only when CMake finds both.
//
// NOT RUN: no TensorRT or GPU was available where this was written. It follows NVIDIA's documentation:
//  - the runtime flow of NVIDIA/TensorRT quickstart/SemanticSegmentation/tutorial-runtime.cpp:
//    createInferRuntime -> deserializeCudaEngine -> createExecutionContext -> setInputShape ->
//    getTensorShape(output) -> cudaMalloc -> setTensorAddress -> enqueueV3(stream) -> cudaMemcpyAsync back;
//  - the TensorRT developer guide, "Working with Dynamic Shapes" (setInputShape before getTensorShape of outputs)
//    and the C++ API reference of IExecutionContext / ICudaEngine (getNbIOTensors, getIOTensorName,
//    getTensorIOMode, getTensorDataType), unchanged between 10.x and 11.x;
//  - NvInferRuntime.h: getInferLibMajorVersion/Minor/Patch/BuildVersion() give the loaded library's version.
// A plan loads only on the TensorRT version that built it and on the same compute capability, so the manifest's
// `engine` record is checked first and a mismatch is refused with one line instead of TensorRT's own errors.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include "backends.hpp"

namespace segdeploy::detail {

namespace {

// Keeps TensorRT's last error for our one-line message; prints warnings only when asked to.
class Logger : public nvinfer1::ILogger {
public:
    explicit Logger(bool verbose) : verbose_(verbose) {}
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kERROR) last_error_ = msg ? msg : "";
        else if (verbose_ && severity <= Severity::kWARNING) std::cerr << "TensorRT: " << msg << '\n';
    }
    const std::string& last_error() const { return last_error_; }

private:
    bool verbose_;
    std::string last_error_;
};

void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw Error(kExitError, std::string("CUDA ") + what + " failed: " + cudaGetErrorString(status));
}

class DeviceBuffer {
public:
    explicit DeviceBuffer(std::size_t bytes) { check_cuda(cudaMalloc(&ptr_, bytes ? bytes : 1), "cudaMalloc"); }
    ~DeviceBuffer() { cudaFree(ptr_); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    void* get() const { return ptr_; }

private:
    void* ptr_ = nullptr;
};

bool from_trt(nvinfer1::DataType type, DType* out) {
    switch (type) {
        case nvinfer1::DataType::kUINT8: *out = DType::UInt8; return true;
        case nvinfer1::DataType::kINT32: *out = DType::Int32; return true;
        case nvinfer1::DataType::kINT64: *out = DType::Int64; return true;
        case nvinfer1::DataType::kFLOAT: *out = DType::Float32; return true;
        default: return false;
    }
}

std::string library_version() {
    return std::to_string(getInferLibMajorVersion()) + "." + std::to_string(getInferLibMinorVersion()) + "." +
           std::to_string(getInferLibPatchVersion()) + "." + std::to_string(getInferLibBuildVersion());
}

// "10.3.0.30" against "10.3.0": compare as many components as the manifest gives.
bool same_version(const std::string& wanted, const std::string& have) {
    std::stringstream a(wanted), b(have);
    std::string x, y;
    int compared = 0;
    while (std::getline(a, x, '.')) {
        if (!std::getline(b, y, '.') || x != y) return false;
        ++compared;
    }
    return compared > 0;
}

class TrtBackend : public Backend {
public:
    TrtBackend(const Manifest& manifest, const Options& options)
        : input_name_(manifest.input.name), output_name_(manifest.output.name), logger_(options.verbose) {
        if (!manifest.engine)
            throw Error(kExitBadInput, "the bundle has no TensorRT plan (its manifest's 'engine' is null)");
        const EngineSpec& spec = *manifest.engine;

        int devices = 0;
        if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
            throw Error(kExitMissingDependency, "no CUDA GPU is available for the TensorRT backend");
        int device = 0;
        check_cuda(cudaGetDevice(&device), "cudaGetDevice");
        cudaDeviceProp prop{};
        check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
        const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
        const std::string version = library_version();
        if (!same_version(spec.tensorrt_version, version))
            throw Error(kExitBadInput, manifest.resolve(spec.file).string() + " was built with TensorRT " +
                                           spec.tensorrt_version + " but this program runs TensorRT " + version +
                                           ": rebuild the plan here with `segdeploy build`");
        if (spec.compute_capability != cc)
            throw Error(kExitBadInput, manifest.resolve(spec.file).string() + " was built for compute capability " +
                                           spec.compute_capability + " (" +
                                           (spec.gpu_name.empty() ? "another GPU" : spec.gpu_name) +
                                           ") but this GPU (" + prop.name + ") is " + cc +
                                           ": rebuild the plan here with `segdeploy build`");

        std::ifstream file(manifest.resolve(spec.file), std::ios::binary);
        if (!file) throw Error(kExitBadInput, manifest.resolve(spec.file).string() + " is missing");
        const std::vector<char> plan((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());

        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw Error(kExitError, "TensorRT could not create a runtime: " + logger_.last_error());
        engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
        if (!engine_)
            throw Error(kExitBadInput, "TensorRT " + version + " cannot load " + manifest.resolve(spec.file).string() +
                                           ": " + first_line(logger_.last_error()));
        context_.reset(engine_->createExecutionContext());
        if (!context_)
            throw Error(kExitError, "TensorRT could not create an execution context: " + logger_.last_error());
        check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");

        bool has_input = false, has_output = false;
        for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
            const std::string name = engine_->getIOTensorName(i);
            if (engine_->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT) {
                if (name != input_name_)
                    throw Error(kExitBadInput, "the plan has an input '" + name + "' the manifest does not describe");
                has_input = true;
            } else {
                outputs_.push_back(name);
                has_output = has_output || name == output_name_;
            }
        }
        if (!has_input || !has_output)
            throw Error(kExitBadInput, "the plan's tensors do not include the manifest's input '" + input_name_ +
                                           "' and output '" + output_name_ + "'");
    }

    ~TrtBackend() override {
        if (stream_) cudaStreamDestroy(stream_);
    }

    Tensor run(const Tensor& input) override {
        DType want;
        if (!from_trt(engine_->getTensorDataType(input_name_.c_str()), &want) || want != input.dtype)
            throw Error(kExitBadInput,
                        "the plan's input '" + input_name_ + "' does not take " + dtype_name(input.dtype));
        nvinfer1::Dims dims{};
        dims.nbDims = static_cast<int32_t>(input.shape.size());
        for (int i = 0; i < dims.nbDims; ++i) dims.d[i] = input.shape[i];
        if (!context_->setInputShape(input_name_.c_str(), dims))
            throw Error(kExitBadInput, "TensorRT refused input shape " + format_shape(input.shape) +
                                           " (outside the plan's optimization profile?): " + logger_.last_error());

        DeviceBuffer device_input(input.bytes());
        check_cuda(cudaMemcpyAsync(device_input.get(), input.data.data(), input.bytes(), cudaMemcpyHostToDevice,
                                   stream_), "cudaMemcpyAsync to the GPU");
        context_->setTensorAddress(input_name_.c_str(), device_input.get());

        // Every output needs an address, even those the manifest does not name.
        std::map<std::string, std::unique_ptr<DeviceBuffer>> buffers;
        Tensor result;
        for (const auto& name : outputs_) {
            const nvinfer1::Dims shape = context_->getTensorShape(name.c_str());
            std::vector<int64_t> sizes;
            for (int i = 0; i < shape.nbDims; ++i) {
                if (shape.d[i] < 0)
                    throw Error(kExitError, "TensorRT could not infer the shape of output '" + name + "'");
                sizes.push_back(shape.d[i]);
            }
            DType dtype;
            if (!from_trt(engine_->getTensorDataType(name.c_str()), &dtype)) {
                if (name == output_name_)
                    throw Error(kExitBadInput, "output '" + name + "' has a TensorRT type this runtime cannot read");
                dtype = DType::Float32;  // unread: only its size matters, 4 bytes covers half/int8/bool
            }
            Tensor host(dtype, sizes);
            buffers[name] = std::make_unique<DeviceBuffer>(host.bytes());
            context_->setTensorAddress(name.c_str(), buffers[name]->get());
            if (name == output_name_) result = std::move(host);
        }
        if (!context_->enqueueV3(stream_))
            throw Error(kExitError, "TensorRT failed to run the plan: " + logger_.last_error());
        check_cuda(cudaMemcpyAsync(result.data.data(), buffers[output_name_]->get(), result.bytes(),
                                   cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync from the GPU");
        check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        return result;
    }

    std::string describe() const override { return "TensorRT " + library_version(); }

private:
    std::string input_name_, output_name_;
    std::vector<std::string> outputs_;
    Logger logger_;
    // Members die in reverse order: the context, then the engine, the runtime, and the logger they use.
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    cudaStream_t stream_ = nullptr;
};

}  // namespace

std::string trt_version() { return library_version(); }

std::unique_ptr<Backend> make_trt_backend(const Manifest& manifest, const Options& options) {
    return std::make_unique<TrtBackend>(manifest, options);
}

}  // namespace segdeploy::detail
