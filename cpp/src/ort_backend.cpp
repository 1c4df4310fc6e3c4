// ONNX Runtime backend (C++ API, CPU execution provider).
//
// ORT_API_MANUAL_INIT (set by CMake for this file) stops onnxruntime_cxx_api.h from fetching the API table in a
// static initializer, which would crash before main() when the library is older than the headers; here the
// mismatch becomes one error line instead.
#include <chrono>
#include <cstring>

#include <onnxruntime_cxx_api.h>

#include "backends.hpp"

namespace segdeploy::detail {

namespace {

ONNXTensorElementDataType to_ort(DType dtype) {
    switch (dtype) {
        case DType::UInt8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
        case DType::Int32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
        case DType::Int64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
        case DType::Float32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

bool from_ort(ONNXTensorElementDataType type, DType* out) {
    switch (type) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: *out = DType::UInt8; return true;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: *out = DType::Int32; return true;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: *out = DType::Int64; return true;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: *out = DType::Float32; return true;
        default: return false;
    }
}

std::string version_string() {
    return OrtGetApiBase()->GetVersionString();
}

void init_api() {
    static const OrtApi* api = nullptr;
    if (api) return;
    api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (!api)
        throw Error(kExitMissingDependency, "the ONNX Runtime library (" + version_string() +
                                                ") is older than the headers this program was built with (API " +
                                                std::to_string(ORT_API_VERSION) + ")");
    Ort::InitApi(api);
}

class OrtBackend : public Backend {
    struct Lane;

public:
    OrtBackend(const Manifest& manifest, const Options& options)
        : input_name_(manifest.input.name), output_name_(manifest.output.name), input_dtype_(manifest.input.dtype) {
        init_api();
        // FATAL only: ONNX Runtime's own error lines would come before ours; its exceptions carry the message.
        env_ = Ort::Env(options.verbose ? ORT_LOGGING_LEVEL_WARNING : ORT_LOGGING_LEVEL_FATAL, "segdeploy");
        Ort::SessionOptions session_options;
        if (options.threads > 0) session_options.SetIntraOpNumThreads(options.threads);
        const auto model = manifest.model_path();
        std::error_code ec;
        if (!std::filesystem::is_regular_file(model, ec))
            throw Error(kExitBadInput, model.string() + " is missing: the bundle is incomplete");
        try {
            session_ = Ort::Session(env_, model.c_str(), session_options);
        } catch (const Ort::Exception& exc) {
            throw Error(kExitBadInput, "ONNX Runtime cannot load " + model.string() + ": " + first_line(exc.what()));
        }
        check_name(input_name_, true);
        check_name(output_name_, false);
        cpu_ = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
        run_options_ = Ort::RunOptions();
        for (Lane& lane : lanes_) lane.binding = Ort::IoBinding(session_);
    }

    int max_in_flight() const override { return 1; }
    bool synchronous() const override { return true; }

    void* input(int l, const Shape& shape) override {
        Lane& lane = lanes_[l];
        const std::size_t bytes = shape.count() * dtype_size(input_dtype_);
        if (bytes > lane.in.size()) {
            lane.in.resize(bytes);
            lane.in_bound = Shape{};  // a new buffer needs a new value
        }
        lane.in_shape = shape;
        return lane.in.data();
    }

    // Runs synchronously: ONNX Runtime's CPU provider has no asynchronous run worth the complexity here.
    void submit(int l) override {
        Lane& lane = lanes_[l];
        try {
            if (lane.in_shape != lane.in_bound) {
                // A new shape (or buffer): a value over the lane's buffer, and the output found again by one run
                // into memory ONNX Runtime allocates.
                lane.in_value = Ort::Value::CreateTensor(cpu_, lane.in.data(),
                                                         lane.in_shape.count() * dtype_size(input_dtype_),
                                                         lane.in_shape.d.data(),
                                                         static_cast<std::size_t>(lane.in_shape.rank),
                                                         to_ort(input_dtype_));
                lane.binding.BindInput(input_name_.c_str(), lane.in_value);
                lane.binding.BindOutput(output_name_.c_str(), cpu_);
                lane.in_bound = lane.in_shape;
                lane.out_bound = false;
            }
            const auto start = std::chrono::steady_clock::now();
            {
                ExternalScope runtime(ExternalCall::Runtime);
                session_.Run(run_options_, lane.binding);
            }
            lane.model_ms =
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
            if (!lane.out_bound) bind_output(lane);
        } catch (const Ort::Exception& exc) {
            throw Error(kExitError, "ONNX Runtime failed on input " + format_shape(lane.in_shape) + ": " +
                                        first_line(exc.what()));
        }
    }

    HostView wait(int l, double* model_ms) override {
        const Lane& lane = lanes_[l];
        *model_ms = lane.model_ms;
        return HostView{lane.out_dtype, lane.out_shape, lane.out.data()};
    }

    std::string describe() const override { return "onnxruntime " + version_string(); }

private:
    void check_name(const std::string& name, bool input) {
        Ort::AllocatorWithDefaultOptions allocator;
        const std::size_t n = input ? session_.GetInputCount() : session_.GetOutputCount();
        std::string names;
        for (std::size_t i = 0; i < n; ++i) {
            auto got = input ? session_.GetInputNameAllocated(i, allocator)
                             : session_.GetOutputNameAllocated(i, allocator);
            if (name == got.get()) return;
            names += std::string(names.empty() ? "" : ", ") + got.get();
        }
        throw Error(kExitBadInput, std::string("the manifest's ") + (input ? "input" : "output") + " '" + name +
                                       "' is not in model.onnx (it has: " + names + ")");
    }

    // The output of the first run at a shape, in memory ONNX Runtime allocated: copied into the lane's buffer, which
    // is then bound as the output of every later run at that shape.
    void bind_output(Lane& lane) {
        std::vector<Ort::Value> values = lane.binding.GetOutputValues();
        const auto info = values.at(0).GetTensorTypeAndShapeInfo();
        if (!from_ort(info.GetElementType(), &lane.out_dtype))
            throw Error(kExitBadInput, "output '" + output_name_ + "' has an element type this runtime cannot read");
        lane.out_shape = Shape(info.GetShape());
        const std::size_t bytes = lane.out_shape.count() * dtype_size(lane.out_dtype);
        if (bytes > lane.out.size()) lane.out.resize(bytes);
        std::memcpy(lane.out.data(), values[0].GetTensorRawData(), bytes);
        lane.out_value = Ort::Value::CreateTensor(cpu_, lane.out.data(), bytes, lane.out_shape.d.data(),
                                                  static_cast<std::size_t>(lane.out_shape.rank),
                                                  to_ort(lane.out_dtype));
        lane.binding.BindOutput(output_name_.c_str(), lane.out_value);
        lane.out_bound = true;
    }


    struct Lane {
        std::vector<unsigned char> in, out;  // grown, never shrunk
        Shape in_shape, in_bound, out_shape;
        DType out_dtype = DType::Float32;
        Ort::Value in_value{nullptr}, out_value{nullptr};
        Ort::IoBinding binding{nullptr};
        bool out_bound = false;
        double model_ms = 0.0;
    };

    std::string input_name_, output_name_;
    DType input_dtype_;
    Ort::Env env_{nullptr};
    Ort::Session session_{nullptr};
    Ort::MemoryInfo cpu_{nullptr};  // set after init_api(), as every ONNX Runtime object
    Ort::RunOptions run_options_{nullptr};
    Lane lanes_[Backend::kLanes];
};

}  // namespace

std::string ort_version() { return version_string(); }

std::unique_ptr<Backend> make_ort_backend(const Manifest& manifest, const Options& options) {
    return std::make_unique<OrtBackend>(manifest, options);
}

}  // namespace segdeploy::detail
