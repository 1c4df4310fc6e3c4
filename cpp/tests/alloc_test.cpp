// segdeploy_alloc_test: counts the heap allocations Segmenter::run makes per frame once warm.
//
//   segdeploy_alloc_test BUNDLE [--backend ort|trt] [--width W] [--height H] [--batch B] [--frames N]
//
// malloc and its relatives are replaced in this program (they forward to glibc's), so every allocation in the
// process is seen: segdeploy's own code, OpenCV, the runtime and the C++ library alike. Each is attributed by
// what the calling thread is inside (segdeploy marks its calls into OpenCV and into the runtime). Prints one JSON
// line: the frames measured after warm-up and the allocations in each bucket. With FAKE_TRT_LOG set (the fake
// TensorRT), "MARK steady begin/end" lines bracket the measured frames in that log, so the device allocations
// and tensor bindings the fake records can be counted too.
#include <malloc.h>
#include <pthread.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "backends.hpp"
#include "segdeploy/segmenter.hpp"

extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
}

namespace {

std::atomic<bool> g_counting{false};
pthread_t g_main;
std::atomic<long> g_counts[4];  // segdeploy, OpenCV, runtime, other threads

void count() {
    if (!g_counting.load(std::memory_order_relaxed)) return;
    if (!pthread_equal(pthread_self(), g_main)) {
        ++g_counts[3];
        return;
    }
    ++g_counts[static_cast<int>(segdeploy::detail::current_external_call())];
}

void mark(const char* what) {
    const char* path = std::getenv("FAKE_TRT_LOG");
    if (!path) return;
    if (FILE* f = std::fopen(path, "a")) {
        std::fprintf(f, "MARK %s\n", what);
        std::fclose(f);
    }
}

}  // namespace

extern "C" {
void* malloc(size_t n) {
    count();
    return __libc_malloc(n);
}
void* calloc(size_t a, size_t b) {
    count();
    return __libc_calloc(a, b);
}
void* realloc(void* p, size_t n) {
    count();
    return __libc_realloc(p, n);
}
void* memalign(size_t alignment, size_t n) {
    count();
    return __libc_memalign(alignment, n);
}
void* aligned_alloc(size_t alignment, size_t n) {
    count();
    return __libc_memalign(alignment, n);
}
int posix_memalign(void** out, size_t alignment, size_t n) {
    count();
    *out = __libc_memalign(alignment, n);
    return *out ? 0 : 12;  // ENOMEM
}
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: segdeploy_alloc_test BUNDLE [--backend ort|trt] [--width W] [--height H] "
                             "[--batch B] [--frames N]\n");
        return 2;
    }
    std::string backend = "ort";
    int width = 64, height = 48, batch = 1, frames = 20;
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--backend") backend = v;
        else if (a == "--width") width = std::atoi(v.c_str());
        else if (a == "--height") height = std::atoi(v.c_str());
        else if (a == "--batch") batch = std::atoi(v.c_str());
        else if (a == "--frames") frames = std::atoi(v.c_str());
    }
    g_main = pthread_self();
    try {
        segdeploy::Options options;
        options.threads = 1;  // ONNX Runtime runs on this thread: its allocations are attributed, not "other"
        segdeploy::Segmenter segmenter(argv[1], segdeploy::backend_from_name(backend), options);
        std::vector<cv::Mat> inputs(static_cast<std::size_t>(batch)), classmaps;
        for (int b = 0; b < batch; ++b) {
            inputs[static_cast<std::size_t>(b)].create(height, width, CV_8UC3);
            cv::randu(inputs[static_cast<std::size_t>(b)], 0, 256);
        }
        classmaps.reserve(static_cast<std::size_t>(batch));
        cv::Mat single;
        auto step = [&] {
            if (batch == 1) segmenter.run(inputs[0], single);
            else segmenter.run(inputs, classmaps);
        };
        for (int i = 0; i < 3; ++i) step();  // warm-up: buffers for this shape, ONNX Runtime's arena
        mark("steady begin");
        g_counting = true;
        for (int i = 0; i < frames; ++i) step();
        g_counting = false;
        mark("steady end");
        std::printf("{\"frames\": %d, \"segdeploy\": %ld, \"opencv\": %ld, \"runtime\": %ld, \"other_threads\": %ld}\n",
                    frames, g_counts[0].load(), g_counts[1].load(), g_counts[2].load(), g_counts[3].load());
    } catch (const segdeploy::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return e.exit_code();
    }
    return 0;
}
