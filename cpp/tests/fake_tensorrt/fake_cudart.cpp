// A fake libcudart.so.12 (CUDA runtime API, compiled against its real headers): one "GPU" whose memory is host
// memory, streams that run work at once, and bookkeeping of every allocation, stream and event.
//
// Environment: FAKE_CUDA_DEVICE_COUNT_ERROR=N (cudaGetDeviceCount fails with error N), FAKE_CUDA_DEVICES=N
// (default 1), FAKE_CUDA_CC=major.minor (default 8.9).
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "fake_common.hpp"

namespace {

struct State {
    std::mutex mutex;
    std::map<const void*, std::size_t> device, pinned;
    std::set<void*> streams;
    std::set<void*> busy;  // streams with work enqueued since their last synchronization
    struct Event {
        void* stream = nullptr;
        double ms = 0;
    };
    std::map<void*, Event> events;
    ~State() {
        for (const auto& [ptr, bytes] : device) fake_trt::event("LEAK cudaMalloc %zu bytes", bytes);
        for (const auto& [ptr, bytes] : pinned) fake_trt::event("LEAK cudaHostAlloc %zu bytes", bytes);
        for (void* s : streams) fake_trt::event("LEAK stream %p", s);
        for (const auto& e : events) fake_trt::event("LEAK event %p", e.first);
    }
};

State& state() {
    static State s;
    return s;
}

double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Where a copy may read or write: host memory (pinned or not) or a live device allocation large enough.
bool device_range_ok(State& s, const void* ptr, std::size_t bytes) {
    for (const auto& [base, size] : s.device) {
        const auto* b = static_cast<const unsigned char*>(base);
        const auto* p = static_cast<const unsigned char*>(ptr);
        if (p >= b && p < b + size) return p + bytes <= b + size;
    }
    return false;
}

}  // namespace

extern "C" {

std::size_t fake_cuda_device_bytes(const void* ptr) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    const auto it = s.device.find(ptr);
    return it == s.device.end() ? 0 : it->second;
}

int fake_cuda_stream_live(void* stream) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    return s.streams.count(stream) ? 1 : 0;
}

void fake_cuda_stream_mark_busy(void* stream) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    s.busy.insert(stream);
}

int fake_cuda_stream_busy(void* stream) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    return s.busy.count(stream) ? 1 : 0;
}

}  // extern "C"

const char* cudaGetErrorName(cudaError_t error) {
    switch (error) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
        case cudaErrorNoDevice: return "cudaErrorNoDevice";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        default: return "cudaErrorUnknown";
    }
}

const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {
        case cudaSuccess: return "no error";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        case cudaErrorInvalidValue: return "invalid argument";
        default: return "unknown error";
    }
}

cudaError_t cudaGetDeviceCount(int* count) {
    fake_trt::event("cudaGetDeviceCount");
    const std::string error = fake_trt::env("FAKE_CUDA_DEVICE_COUNT_ERROR");
    if (!error.empty()) {
        *count = 0;
        return static_cast<cudaError_t>(std::atoi(error.c_str()));
    }
    *count = std::atoi(fake_trt::env("FAKE_CUDA_DEVICES", "1").c_str());
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
    if (device != 0) return cudaErrorInvalidValue;
    std::memset(prop, 0, sizeof *prop);
    std::strncpy(prop->name, "Fake GPU", sizeof prop->name - 1);
    const std::string cc = fake_trt::env("FAKE_CUDA_CC", "8.9");
    prop->major = std::atoi(cc.c_str());
    prop->minor = std::atoi(cc.substr(cc.find('.') + 1).c_str());
    return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    *ptr = std::malloc(bytes ? bytes : 1);
    s.device[*ptr] = bytes;
    fake_trt::event("cudaMalloc %zu %p", bytes, *ptr);
    return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!ptr) return cudaSuccess;
    if (!s.device.erase(ptr)) {
        fake_trt::event("VIOLATION cudaFree of %p, not a live device allocation", ptr);
        return cudaErrorInvalidValue;
    }
    fake_trt::event("cudaFree %p", ptr);
    std::free(ptr);
    return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned int) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    *ptr = std::malloc(bytes ? bytes : 1);
    s.pinned[*ptr] = bytes;
    fake_trt::event("cudaHostAlloc %zu %p", bytes, *ptr);
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.pinned.erase(ptr)) {
        fake_trt::event("VIOLATION cudaFreeHost of %p, not a live pinned allocation", ptr);
        return cudaErrorInvalidValue;
    }
    fake_trt::event("cudaFreeHost %p", ptr);
    std::free(ptr);
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    void* handle = std::malloc(1);
    s.streams.insert(handle);
    *stream = static_cast<cudaStream_t>(handle);
    fake_trt::event("cudaStreamCreate %p", handle);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.streams.erase(stream)) {
        fake_trt::event("VIOLATION cudaStreamDestroy of %p, not a live stream", static_cast<void*>(stream));
        return cudaErrorInvalidValue;
    }
    s.busy.erase(stream);
    fake_trt::event("cudaStreamDestroy %p", static_cast<void*>(stream));
    std::free(stream);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.streams.count(stream)) {
        fake_trt::event("VIOLATION cudaStreamSynchronize of %p, not a live stream", static_cast<void*>(stream));
        return cudaErrorInvalidValue;
    }
    s.busy.erase(stream);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    State& s = state();
    {
        std::lock_guard<std::mutex> lock(s.mutex);
        if (!s.streams.count(stream)) fake_trt::event("VIOLATION cudaMemcpyAsync on %p, not a live stream", (void*)stream);
        const bool ok = kind == cudaMemcpyHostToDevice   ? device_range_ok(s, dst, bytes)
                        : kind == cudaMemcpyDeviceToHost ? device_range_ok(s, src, bytes)
                                                         : false;
        if (!ok) {
            fake_trt::event("VIOLATION cudaMemcpyAsync of %zu bytes outside a device allocation (kind %d)", bytes,
                            static_cast<int>(kind));
            return cudaErrorInvalidValue;
        }
        s.busy.insert(stream);
    }
    std::memcpy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    void* handle = std::malloc(1);
    s.events[handle] = {};
    *event = static_cast<cudaEvent_t>(handle);
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.events.erase(event)) return cudaErrorInvalidValue;
    std::free(event);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    const auto it = s.events.find(event);
    if (it == s.events.end() || !s.streams.count(stream)) return cudaErrorInvalidValue;
    it->second = {stream, now_ms()};
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    const auto it = s.events.find(event);
    if (it == s.events.end()) return cudaErrorInvalidValue;
    s.busy.erase(it->second.stream);  // all work before the event is done (the fake runs it at once)
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    const auto a = s.events.find(start), b = s.events.find(end);
    if (a == s.events.end() || b == s.events.end()) return cudaErrorInvalidValue;
    *ms = static_cast<float>(b->second.ms - a->second.ms);
    return cudaSuccess;
}
