// ONNX Runtime backend (C++ API, CPU execution provider).
//
// ORT_API_MANUAL_INIT (set by CMake for this file) stops onnxruntime_cxx_api.h from fetching the API table in a
// static initializer, which would crash before main() when the library is older than the headers; here the
// mismatch becomes one error line instead.
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
public:
    OrtBackend(const Manifest& manifest, const Options& options)
        : input_name_(manifest.input.name), output_name_(manifest.output.name) {
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
    }

    Tensor run(const Tensor& input) override {
        try {
            const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
            // ONNX Runtime only reads the input buffer; the API takes a non-const pointer.
            auto value = Ort::Value::CreateTensor(memory, const_cast<unsigned char*>(input.data.data()),
                                                  input.bytes(), input.shape.data(), input.shape.size(),
                                                  to_ort(input.dtype));
            const char* in_names[] = {input_name_.c_str()};
            const char* out_names[] = {output_name_.c_str()};
            auto outputs = session_.Run(Ort::RunOptions{nullptr}, in_names, &value, 1, out_names, 1);
            const auto info = outputs[0].GetTensorTypeAndShapeInfo();
            DType dtype;
            if (!from_ort(info.GetElementType(), &dtype))
                throw Error(kExitBadInput,
                            "output '" + output_name_ + "' has an element type this runtime cannot read");
            Tensor out(dtype, info.GetShape());
            std::memcpy(out.data.data(), outputs[0].GetTensorRawData(), out.bytes());
            return out;
        } catch (const Ort::Exception& exc) {
            throw Error(kExitError, "ONNX Runtime failed on input " + format_shape(input.shape) + ": " +
                                        first_line(exc.what()));
        }
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

    std::string input_name_, output_name_;
    Ort::Env env_{nullptr};
    Ort::Session session_{nullptr};
};

}  // namespace

std::string ort_version() { return version_string(); }

std::unique_ptr<Backend> make_ort_backend(const Manifest& manifest, const Options& options) {
    return std::make_unique<OrtBackend>(manifest, options);
}

}  // namespace segdeploy::detail
