// Shared by the fake libnvinfer, libnvinfer_plugin and libcudart: an event log and failure reporting.
//
// Every call the program makes is appended as one line to the file named by FAKE_TRT_LOG (when set): the tests
// read the order of creation and destruction, the allocations per frame, and lines starting with VIOLATION (a
// use the real library forbids) or LEAK (what was never released by exit).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace fake_trt {

inline void event(const char* format, ...) __attribute__((format(printf, 1, 2)));
inline void event(const char* format, ...) {
    const char* path = std::getenv("FAKE_TRT_LOG");
    if (!path) return;
    char line[1024];
    va_list args;
    va_start(args, format);
    const int n = std::vsnprintf(line, sizeof line - 1, format, args);
    va_end(args);
    if (n < 0) return;
    std::size_t len = static_cast<std::size_t>(n) < sizeof line - 1 ? static_cast<std::size_t>(n) : sizeof line - 2;
    line[len++] = '\n';
    const int fd = ::open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return;
    (void)!::write(fd, line, len);  // one write per line: O_APPEND keeps lines whole across threads
    ::close(fd);
}

[[noreturn]] inline void unexpected(const char* what) {
    event("VIOLATION unexpected call %s (the fake does not implement it)", what);
    std::fprintf(stderr, "fake TensorRT: unexpected call %s\n", what);
    std::abort();
}

inline std::string env(const char* name, const char* fallback = "") {
    const char* v = std::getenv(name);
    return v ? v : fallback;
}

}  // namespace fake_trt

// Exported by the fake libcudart for the fake libnvinfer: what a device pointer or stream is.
extern "C" {
// Bytes of the live device allocation starting at `ptr` (0 when it is none).
std::size_t fake_cuda_device_bytes(const void* ptr);
int fake_cuda_stream_live(void* stream);
void fake_cuda_stream_mark_busy(void* stream);
int fake_cuda_stream_busy(void* stream);
}
