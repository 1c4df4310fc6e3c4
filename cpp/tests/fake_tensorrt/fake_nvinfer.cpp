// A fake libnvinfer built from one release's public headers: the real inline classes of NvInferRuntime.h run
// against implementation objects defined here (stubs.hpp for everything segdeploy does not call).
//
// A "plan" is JSON (see tests/test_cpp_tensorrt.py): input and output tensors with types, formats and shapes,
// optimization profiles, a 1x1-convolution "model" (class scores = weights x channels + bias, optionally strided)
// and failures to inject. The fake checks what the real library requires and logs VIOLATION lines otherwise:
// addresses set for every tensor, device buffers large enough for the tensor's format (vectorized padding
// included), live streams, one profile per concurrently used context, contexts destroyed before their engine and
// engines before their runtime. Environment: FAKE_TRT_LIB_VERSION=a.b.c.d (the version the library reports),
// FAKE_TRT_RUNTIME_ERROR=1 (createInferRuntime logs errors and returns a runtime that crashes when used).
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "fake_common.hpp"
#include "stubs.hpp"

using nlohmann::json;
using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::ILogger;
using nvinfer1::TensorFormat;

namespace fake_trt {

namespace {

std::atomic<bool> g_plugins{false};

struct Tensor {
    std::string name, role;  // role: "input", "scores", "classmap" or "aux"
    bool input = false;
    DataType type = DataType::kFLOAT;
    TensorFormat format = TensorFormat::kLINEAR;
    std::string format_name = "linear";
    int components = 1, vectorized_dim = -1;
};

struct Plan {
    std::vector<Tensor> tensors;
    std::vector<int64_t> input_shape;  // engine shape, -1 where dynamic
    std::string layout = "NCHW";
    struct Profile {
        std::vector<int64_t> min, opt, max;
    };
    std::vector<Profile> profiles;
    std::vector<std::vector<float>> weights;
    std::vector<float> bias;
    int stride = 1;
    std::string fail_set_address, fail_enqueue, fail_profile;
    bool dynamic() const {
        return std::any_of(input_shape.begin(), input_shape.end(), [](int64_t d) { return d < 0; });
    }
};

std::size_t type_size(DataType t) {
    switch (t) {
        case DataType::kFLOAT:
        case DataType::kINT32: return 4;
        case DataType::kHALF: return 2;
        case DataType::kINT64: return 8;
        default: return 1;
    }
}

DataType type_named(const std::string& s) {
    if (s == "float32") return DataType::kFLOAT;
    if (s == "half") return DataType::kHALF;
    if (s == "int32") return DataType::kINT32;
    if (s == "int64") return DataType::kINT64;
    if (s == "uint8") return DataType::kUINT8;
    if (s == "int8") return DataType::kINT8;
    return DataType::kBOOL;
}

void set_format(Tensor& t, const std::string& f, int rank) {
    t.format_name = f;
    const int channel = rank - 3;
    struct Known {
        const char* name;
        TensorFormat format;
        int components;
        bool vectorized;
    };
    static const Known known[] = {
        {"linear", TensorFormat::kLINEAR, 1, false}, {"chw2", TensorFormat::kCHW2, 2, true},
        {"chw4", TensorFormat::kCHW4, 4, true},      {"chw16", TensorFormat::kCHW16, 16, true},
        {"chw32", TensorFormat::kCHW32, 32, true},   {"hwc8", TensorFormat::kHWC8, 8, true},
        {"hwc16", TensorFormat::kHWC16, 16, true},   {"hwc", TensorFormat::kHWC, 1, false},
        {"dla_hwc4", TensorFormat::kDLA_HWC4, 4, true},
    };
    for (const auto& k : known)
        if (f == k.name) {
            t.format = k.format;
            t.components = k.components;
            t.vectorized_dim = k.vectorized ? channel : -1;
            return;
        }
    unexpected(("format " + f).c_str());
}

uint16_t float_to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    const int exponent = static_cast<int>((x >> 23) & 0xff) - 127 + 15;
    uint32_t mantissa = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return static_cast<uint16_t>(sign | 0x7c00 | (mantissa ? 0x200 : 0));
    if (exponent >= 31) return static_cast<uint16_t>(sign | 0x7c00);
    if (exponent <= 0) {
        if (exponent < -10) return static_cast<uint16_t>(sign);
        mantissa |= 0x800000;
        const int shift = 14 - exponent;
        uint32_t half = mantissa >> shift;
        const uint32_t rest = mantissa & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) ++half;
        return static_cast<uint16_t>(sign | half);
    }
    uint32_t half = sign | (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13);
    const uint32_t rest = mantissa & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) ++half;
    return static_cast<uint16_t>(half);
}

Dims dims_of(const std::vector<int64_t>& v) {
    Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) d.d[i] = v[i];
    return d;
}

class Engine;

// --------------------------------------------------------------------------------------------- context
class ContextImpl : public StubVExecutionContext {
public:
    ContextImpl(Engine& engine, ILogger& logger) : engine_(engine), logger_(logger) {}
    bool setInputShape(char const* name, Dims const& dims) noexcept override;
    Dims getTensorShape(char const* name) const noexcept override;
    bool setTensorAddress(char const* name, void* data) noexcept override;
    bool enqueueV3(cudaStream_t stream) noexcept override;
    bool setOptimizationProfileAsync(int32_t index, cudaStream_t stream) noexcept override;
    int32_t getOptimizationProfile() const noexcept override { return profile_; }

    Engine& engine_;
    ILogger& logger_;
    int profile_ = 0;
    std::vector<int64_t> input_;  // set input shape (empty: none)
    std::vector<void*> addresses_;
    void* last_stream_ = nullptr;
};

class Context : public nvinfer1::IExecutionContext {
public:
    Context(Engine& engine, ILogger& logger);
    ~Context() override;
    ContextImpl impl_;
};

// --------------------------------------------------------------------------------------------- engine
class EngineImpl : public StubVCudaEngine {
public:
    EngineImpl(Engine& owner) : owner_(owner) {}
    int32_t getNbIOTensors() const noexcept override;
    char const* getIOTensorName(int32_t index) const noexcept override;
    nvinfer1::TensorIOMode getTensorIOMode(char const* name) const noexcept override;
    DataType getTensorDataType(char const* name) const noexcept override;
    Dims getTensorShape(char const* name) const noexcept override;
    TensorFormat getTensorFormat(char const* name) const noexcept override;
    char const* getTensorFormatDesc(char const* name) const noexcept override;
    int32_t getTensorVectorizedDim(char const* name) const noexcept override;
    int32_t getTensorComponentsPerElement(char const* name) const noexcept override;
    int32_t getTensorBytesPerComponent(char const* name) const noexcept override;
    int32_t getNbOptimizationProfiles() const noexcept override;
    Dims getProfileShape(char const* name, int32_t profile, nvinfer1::OptProfileSelector select) const noexcept override;
    nvinfer1::IExecutionContext* createExecutionContext(nvinfer1::ExecutionContextAllocationStrategy) noexcept override;
    Engine& owner_;
};

class Runtime;

class Engine : public nvinfer1::ICudaEngine {
public:
    Engine(Runtime& runtime, ILogger& logger, Plan plan);
    ~Engine() override;
    const Tensor* find(const char* name) const {
        for (const auto& t : plan_.tensors)
            if (name && t.name == name) return &t;
        return nullptr;
    }
    int index(const char* name) const {
        for (std::size_t i = 0; i < plan_.tensors.size(); ++i)
            if (name && plan_.tensors[i].name == name) return static_cast<int>(i);
        return -1;
    }
    // A tensor's shape for an input shape (or the engine's, with -1, for an empty one).
    std::vector<int64_t> shape_for(const Tensor& t, const std::vector<int64_t>& input) const {
        const std::vector<int64_t>& in = input.empty() ? plan_.input_shape : input;
        if (t.input) return in;
        const bool nhwc = plan_.layout == "NHWC";
        const int64_t n = in[0], h = in[nhwc ? 1 : 2], w = in[nhwc ? 2 : 3];
        auto down = [&](int64_t d) { return d < 0 ? d : (d + plan_.stride - 1) / plan_.stride; };
        if (t.role == "classmap") return {n, down(h), down(w)};
        return {n, static_cast<int64_t>(plan_.weights.size()), down(h), down(w)};
    }
    std::size_t required_bytes(const Tensor& t, const std::vector<int64_t>& shape) const {
        std::size_t n = 1;
        for (std::size_t i = 0; i < shape.size(); ++i) {
            int64_t d = shape[i];
            if (static_cast<int>(i) == t.vectorized_dim) d = (d + t.components - 1) / t.components * t.components;
            n *= static_cast<std::size_t>(d);
        }
        return n * type_size(t.type);
    }

    Runtime& runtime_;
    ILogger& logger_;
    Plan plan_;
    EngineImpl impl_;
    std::mutex mutex_;
    std::set<ContextImpl*> contexts_;
};

// --------------------------------------------------------------------------------------------- runtime
class RuntimeImpl : public StubVRuntime {
public:
    RuntimeImpl(Runtime& owner) : owner_(owner) {}
    nvinfer1::ICudaEngine* deserializeCudaEngine(void const* blob, std::size_t size) noexcept override;
    Runtime& owner_;
};

class Runtime : public nvinfer1::IRuntime {
public:
    Runtime(ILogger& logger, bool broken) : logger_(logger), broken_(broken), impl_(*this) {
        mImpl = &impl_;
        event("createInferRuntime %p", static_cast<void*>(this));
    }
    ~Runtime() override {
        if (engines_ > 0) event("VIOLATION runtime destroyed before its %d engine(s)", engines_.load());
        logger_.log(ILogger::Severity::kVERBOSE, "fake runtime destroyed");
        event("destroy runtime %p", static_cast<void*>(this));
    }
    ILogger& logger_;
    bool broken_;
    std::atomic<int> engines_{0};
    RuntimeImpl impl_;
};

Engine::Engine(Runtime& runtime, ILogger& logger, Plan plan)
    : runtime_(runtime), logger_(logger), plan_(std::move(plan)), impl_(*this) {
    mImpl = &impl_;
    ++runtime_.engines_;
}

Engine::~Engine() {
    if (!contexts_.empty()) event("VIOLATION engine destroyed before its %zu context(s)", contexts_.size());
    --runtime_.engines_;
    event("destroy engine %p", static_cast<void*>(this));
}

Context::Context(Engine& engine, ILogger& logger) : impl_(engine, logger) {
    mImpl = &impl_;
    impl_.addresses_.assign(engine.plan_.tensors.size(), nullptr);
    std::lock_guard<std::mutex> lock(engine.mutex_);
    engine.contexts_.insert(&impl_);
}

Context::~Context() {
    if (impl_.last_stream_ && fake_cuda_stream_busy(impl_.last_stream_))
        event("VIOLATION context destroyed while its stream has work in flight");
    std::lock_guard<std::mutex> lock(impl_.engine_.mutex_);
    impl_.engine_.contexts_.erase(&impl_);
    event("destroy context %p", static_cast<void*>(this));
}

Plan parse_plan(const json& j) {
    Plan p;
    const json& in = j.at("input");
    Tensor input;
    input.name = in.at("name");
    input.role = "input";
    input.input = true;
    input.type = type_named(in.at("dtype"));
    p.input_shape = in.at("shape").get<std::vector<int64_t>>();
    p.layout = in.value("layout", "NCHW");
    set_format(input, in.value("format", "linear"), 4);
    p.tensors.push_back(input);
    for (const json& o : j.at("outputs")) {
        Tensor t;
        t.name = o.at("name");
        t.role = o.at("role");
        t.type = type_named(o.at("dtype"));
        set_format(t, o.value("format", "linear"), t.role == "classmap" ? 3 : 4);
        p.tensors.push_back(t);
    }
    for (const json& prof : j.value("profiles", json::array()))
        p.profiles.push_back({prof.at("min"), prof.at("opt"), prof.at("max")});
    p.weights = j.at("weights").get<std::vector<std::vector<float>>>();
    p.bias = j.at("bias").get<std::vector<float>>();
    p.stride = j.value("stride", 1);
    p.fail_set_address = j.value("fail_set_address", "");
    p.fail_enqueue = j.value("fail_enqueue", "");
    p.fail_profile = j.value("fail_profile", "");
    return p;
}

nvinfer1::ICudaEngine* RuntimeImpl::deserializeCudaEngine(void const* blob, std::size_t size) noexcept {
    Runtime& r = owner_;
    event("deserializeCudaEngine %zu bytes", size);
    if (r.broken_) {
        event("VIOLATION deserializeCudaEngine on a runtime whose creation logged errors (the real one crashes)");
        std::abort();
    }
    json j;
    try {
        j = json::parse(static_cast<const char*>(blob), static_cast<const char*>(blob) + size);
    } catch (const std::exception&) {
        r.logger_.log(ILogger::Severity::kERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (magic tag does not match)");
        return nullptr;
    }
    const int threads = j.value("log_threads", 0);
    std::vector<std::thread> loggers;
    for (int t = 0; t < threads; ++t)
        loggers.emplace_back([&r, t] {
            for (int i = 0; i < 200; ++i)
                r.logger_.log(ILogger::Severity::kWARNING, ("fake warning from thread " + std::to_string(t)).c_str());
        });
    for (auto& t : loggers) t.join();
    if (j.contains("deserialize_error")) {
        r.logger_.log(ILogger::Severity::kERROR, j.at("deserialize_error").get<std::string>().c_str());
        return nullptr;
    }
    if (j.value("plugins", false) && !g_plugins) {
        r.logger_.log(ILogger::Severity::kERROR, "getPluginCreator could not find plugin FakePlugin version 1");
        return nullptr;
    }
    if (j.contains("deserialize_logs_error")) {  // fails by logging, yet returns an engine
        r.logger_.log(ILogger::Severity::kERROR, j.at("deserialize_logs_error").get<std::string>().c_str());
    }
    try {
        return new Engine(r, r.logger_, parse_plan(j));
    } catch (const std::exception& exc) {
        r.logger_.log(ILogger::Severity::kERROR, exc.what());
        return nullptr;
    }
}

int32_t EngineImpl::getNbIOTensors() const noexcept { return static_cast<int32_t>(owner_.plan_.tensors.size()); }
char const* EngineImpl::getIOTensorName(int32_t i) const noexcept {
    return i >= 0 && i < getNbIOTensors() ? owner_.plan_.tensors[static_cast<std::size_t>(i)].name.c_str() : nullptr;
}
nvinfer1::TensorIOMode EngineImpl::getTensorIOMode(char const* name) const noexcept {
    const Tensor* t = owner_.find(name);
    return !t ? nvinfer1::TensorIOMode::kNONE : t->input ? nvinfer1::TensorIOMode::kINPUT : nvinfer1::TensorIOMode::kOUTPUT;
}
DataType EngineImpl::getTensorDataType(char const* name) const noexcept {
    const Tensor* t = owner_.find(name);
    return t ? t->type : DataType::kFLOAT;
}
Dims EngineImpl::getTensorShape(char const* name) const noexcept {
    const Tensor* t = owner_.find(name);
    if (!t) return dims_of({-1});
    return dims_of(owner_.shape_for(*t, {}));
}
TensorFormat EngineImpl::getTensorFormat(char const* name) const noexcept {
    const Tensor* t = owner_.find(name);
    return t ? t->format : TensorFormat::kLINEAR;
}
char const* EngineImpl::getTensorFormatDesc(char const* name) const noexcept {
    const Tensor* t = owner_.find(name);
    return t ? t->format_name.c_str() : nullptr;
}
int32_t EngineImpl::getTensorVectorizedDim(char const* name) const noexcept {
    const Tensor* t = owner_.find(name);
    return t ? t->vectorized_dim : -1;
}
int32_t EngineImpl::getTensorComponentsPerElement(char const* name) const noexcept {
    const Tensor* t = owner_.find(name);
    return t ? t->components : -1;
}
int32_t EngineImpl::getTensorBytesPerComponent(char const* name) const noexcept {
    const Tensor* t = owner_.find(name);
    return t ? static_cast<int32_t>(type_size(t->type)) : -1;
}
int32_t EngineImpl::getNbOptimizationProfiles() const noexcept {
    return std::max<int32_t>(1, static_cast<int32_t>(owner_.plan_.profiles.size()));
}
Dims EngineImpl::getProfileShape(char const* name, int32_t profile, nvinfer1::OptProfileSelector select) const noexcept {
    const Tensor* t = owner_.find(name);
    if (!t || !t->input || profile < 0 || profile >= static_cast<int32_t>(owner_.plan_.profiles.size()))
        return dims_of({-1});
    const auto& p = owner_.plan_.profiles[static_cast<std::size_t>(profile)];
    return dims_of(select == nvinfer1::OptProfileSelector::kMIN   ? p.min
                   : select == nvinfer1::OptProfileSelector::kOPT ? p.opt
                                                                   : p.max);
}
nvinfer1::IExecutionContext* EngineImpl::createExecutionContext(nvinfer1::ExecutionContextAllocationStrategy) noexcept {
    auto* c = new Context(owner_, owner_.logger_);
    event("createExecutionContext %p", static_cast<void*>(c));
    return c;
}

bool ContextImpl::setOptimizationProfileAsync(int32_t index, cudaStream_t stream) noexcept {
    event("setOptimizationProfileAsync %d", index);
    if (!fake_cuda_stream_live(stream)) event("VIOLATION setOptimizationProfileAsync on a dead stream");
    if (engine_.plan_.fail_profile == "log") {
        logger_.log(ILogger::Severity::kERROR, "setOptimizationProfileAsync: fake failure");
        return true;  // the error is logged, the return value says nothing
    }
    if (index < 0 || index >= static_cast<int32_t>(engine_.plan_.profiles.size())) {
        logger_.log(ILogger::Severity::kERROR, "setOptimizationProfileAsync: profile index out of range");
        return false;
    }
    profile_ = index;
    input_.clear();
    return true;
}

bool ContextImpl::setInputShape(char const* name, Dims const& dims) noexcept {
    const Tensor* t = engine_.find(name);
    event("setInputShape %s", name ? name : "?");
    if (!t || !t->input) {
        logger_.log(ILogger::Severity::kERROR, "setInputShape: not an input tensor");
        return false;
    }
    std::vector<int64_t> shape(dims.d, dims.d + dims.nbDims);
    const Plan& p = engine_.plan_;
    if (shape.size() != p.input_shape.size()) {
        logger_.log(ILogger::Severity::kERROR, "setInputShape: wrong number of dimensions");
        return false;
    }
    for (std::size_t i = 0; i < shape.size(); ++i) {
        const bool fixed = p.input_shape[i] >= 0;
        const auto& prof = p.profiles.empty() ? Plan::Profile{} : p.profiles[static_cast<std::size_t>(profile_)];
        const bool ok = fixed ? shape[i] == p.input_shape[i]
                              : !prof.min.empty() && shape[i] >= prof.min[i] && shape[i] <= prof.max[i];
        if (!ok) {
            logger_.log(ILogger::Severity::kERROR, "IExecutionContext::setInputShape: Error Code 3: API Usage Error "
                                                   "(dimensions out of the optimization profile's bounds)");
            return false;
        }
    }
    input_ = shape;
    return true;
}

Dims ContextImpl::getTensorShape(char const* name) const noexcept {
    const Tensor* t = engine_.find(name);
    if (!t || input_.empty()) return dims_of({-1});
    return dims_of(engine_.shape_for(*t, input_));
}

bool ContextImpl::setTensorAddress(char const* name, void* data) noexcept {
    const int i = engine_.index(name);
    event("setTensorAddress %s %p", name ? name : "?", data);
    if (i < 0) {
        logger_.log(ILogger::Severity::kERROR, "setTensorAddress: unknown tensor");
        return false;
    }
    if (engine_.plan_.fail_set_address == name) {
        logger_.log(ILogger::Severity::kERROR, "setTensorAddress: address is not aligned (fake failure)");
        return false;
    }
    addresses_[static_cast<std::size_t>(i)] = data;
    return true;
}

bool ContextImpl::enqueueV3(cudaStream_t stream) noexcept {
    const Plan& p = engine_.plan_;
    event("enqueueV3 %p", static_cast<void*>(this));
    if (!fake_cuda_stream_live(stream)) event("VIOLATION enqueueV3 on a dead stream");
    if (input_.empty()) {
        logger_.log(ILogger::Severity::kERROR, "enqueueV3: input shapes not specified");
        return false;
    }
    {
        std::lock_guard<std::mutex> lock(engine_.mutex_);
        if (p.dynamic())
            for (ContextImpl* other : engine_.contexts_)
                if (other != this && other->profile_ == profile_ && other->last_stream_ &&
                    other->last_stream_ != stream && fake_cuda_stream_busy(other->last_stream_))
                    event("VIOLATION two contexts on optimization profile %d in concurrent use", profile_);
    }
    for (std::size_t i = 0; i < p.tensors.size(); ++i) {
        const Tensor& t = p.tensors[i];
        const std::size_t need = engine_.required_bytes(t, engine_.shape_for(t, input_));
        const std::size_t have = addresses_[i] ? fake_cuda_device_bytes(addresses_[i]) : 0;
        if (!addresses_[i]) event("VIOLATION enqueueV3 without an address for %s", t.name.c_str());
        else if (have == 0) event("VIOLATION address of %s is not a live device allocation", t.name.c_str());
        else if (have < need) event("VIOLATION buffer of %zu bytes for %s needs %zu", have, t.name.c_str(), need);
        if (have < need) return false;
    }
    if (p.fail_enqueue == "false") {
        logger_.log(ILogger::Severity::kERROR, "enqueueV3: fake kernel failure");
        return false;
    }
    if (p.fail_enqueue == "log") logger_.log(ILogger::Severity::kERROR, "enqueueV3: fake error logged during a run");

    // The model: scores[k] = sum_c weights[k][c] * x[c] + bias[k] at every stride-th pixel.
    const bool nhwc = p.layout == "NHWC";
    const int64_t n = input_[0], c = input_[nhwc ? 3 : 1], h = input_[nhwc ? 1 : 2], w = input_[nhwc ? 2 : 3];
    const int64_t k = static_cast<int64_t>(p.weights.size());
    const int64_t oh = (h + p.stride - 1) / p.stride, ow = (w + p.stride - 1) / p.stride;
    const auto* x = static_cast<const unsigned char*>(addresses_[0]);
    auto in_at = [&](int64_t b, int64_t ch, int64_t y, int64_t xx) -> float {
        const int64_t i = nhwc ? ((b * h + y) * w + xx) * c + ch : ((b * c + ch) * h + y) * w + xx;
        if (p.tensors[0].type == DataType::kUINT8) return x[i];
        float f;
        std::memcpy(&f, x + i * 4, 4);
        return f;
    };
    std::vector<float> scores(static_cast<std::size_t>(n * k * oh * ow));
    for (int64_t b = 0; b < n; ++b)
        for (int64_t cls = 0; cls < k; ++cls)
            for (int64_t y = 0; y < oh; ++y)
                for (int64_t xx = 0; xx < ow; ++xx) {
                    float s = p.bias[static_cast<std::size_t>(cls)];
                    for (int64_t ch = 0; ch < c; ++ch)
                        s += p.weights[static_cast<std::size_t>(cls)][static_cast<std::size_t>(ch)] *
                             in_at(b, ch, y * p.stride, xx * p.stride);
                    scores[static_cast<std::size_t>(((b * k + cls) * oh + y) * ow + xx)] = s;
                }
    for (std::size_t i = 1; i < p.tensors.size(); ++i) {
        const Tensor& t = p.tensors[i];
        auto* out = static_cast<unsigned char*>(addresses_[i]);
        auto put = [&](std::size_t at, double v) {
            switch (t.type) {
                case DataType::kFLOAT: { const float f = static_cast<float>(v); std::memcpy(out + at * 4, &f, 4); break; }
                case DataType::kHALF: { const uint16_t hv = float_to_half(static_cast<float>(v)); std::memcpy(out + at * 2, &hv, 2); break; }
                case DataType::kINT32: { const int32_t iv = static_cast<int32_t>(v); std::memcpy(out + at * 4, &iv, 4); break; }
                case DataType::kINT64: { const int64_t iv = static_cast<int64_t>(v); std::memcpy(out + at * 8, &iv, 8); break; }
                default: out[at] = static_cast<unsigned char>(v); break;
            }
        };
        if (t.role == "classmap") {
            for (int64_t b = 0; b < n; ++b)
                for (int64_t y = 0; y < oh; ++y)
                    for (int64_t xx = 0; xx < ow; ++xx) {
                        int64_t best = 0;
                        for (int64_t cls = 1; cls < k; ++cls)
                            if (scores[static_cast<std::size_t>(((b * k + cls) * oh + y) * ow + xx)] >
                                scores[static_cast<std::size_t>(((b * k + best) * oh + y) * ow + xx)])
                                best = cls;
                        put(static_cast<std::size_t>((b * oh + y) * ow + xx), static_cast<double>(best));
                    }
            continue;
        }
        const int64_t v = t.components;
        const int64_t blocks = (k + v - 1) / v, padded = blocks * v;
        for (int64_t b = 0; b < n; ++b)
            for (int64_t cls = 0; cls < k; ++cls)
                for (int64_t y = 0; y < oh; ++y)
                    for (int64_t xx = 0; xx < ow; ++xx) {
                        int64_t at;
                        if (t.format == TensorFormat::kLINEAR) at = ((b * k + cls) * oh + y) * ow + xx;
                        else if (t.format == TensorFormat::kHWC || t.format == TensorFormat::kHWC8 ||
                                 t.format == TensorFormat::kHWC16)
                            at = ((b * oh + y) * ow + xx) * (t.format == TensorFormat::kHWC ? k : padded) + cls;
                        else at = (((b * blocks + cls / v) * oh + y) * ow + xx) * v + cls % v;
                        put(static_cast<std::size_t>(at), scores[static_cast<std::size_t>(((b * k + cls) * oh + y) * ow + xx)]);
                    }
    }
    last_stream_ = stream;
    fake_cuda_stream_mark_busy(stream);
    return true;
}

}  // namespace
}  // namespace fake_trt

extern "C" {

void fake_trt_register_plugins() { fake_trt::g_plugins = true; }

void* createInferRuntime_INTERNAL(void* logger, int32_t version) noexcept {
    auto& log = *static_cast<ILogger*>(logger);
    fake_trt::event("createInferRuntime_INTERNAL version %d", version);
    const bool broken = !fake_trt::env("FAKE_TRT_RUNTIME_ERROR").empty();
    if (broken) {  // what the 11.4 lean library did without a working CUDA: two errors, and a runtime anyway
        log.log(ILogger::Severity::kERROR, "CUDA initialization failure with error: 35");
        log.log(ILogger::Severity::kERROR, "createInferRuntime: Error Code 6: API Usage Error (CUDA unusable)");
    }
    return static_cast<nvinfer1::IRuntime*>(new fake_trt::Runtime(log, broken));
}

static int32_t version_part(int index, int32_t fallback) {
    const std::string v = fake_trt::env("FAKE_TRT_LIB_VERSION");
    if (v.empty()) return fallback;
    std::size_t start = 0;
    for (int i = 0; i < index; ++i) {
        start = v.find('.', start);
        if (start == std::string::npos) return 0;
        ++start;
    }
    return std::atoi(v.c_str() + start);
}

int32_t getInferLibMajorVersion() noexcept { return version_part(0, NV_TENSORRT_MAJOR); }
int32_t getInferLibMinorVersion() noexcept { return version_part(1, NV_TENSORRT_MINOR); }
int32_t getInferLibPatchVersion() noexcept { return version_part(2, NV_TENSORRT_PATCH); }
int32_t getInferLibBuildVersion() noexcept { return version_part(3, NV_TENSORRT_BUILD); }

}  // extern "C"
