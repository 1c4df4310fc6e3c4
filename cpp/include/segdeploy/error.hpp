// One error type for everything segdeploy's C++ runtime refuses or fails at, carrying the exit code the
// program reports. The codes match the Python CLI's.
#pragma once

#include <stdexcept>
#include <string>

namespace segdeploy {

enum ExitCode : int {
    kExitOk = 0,
    kExitError = 1,             // a runtime failure that is not the input's fault
    kExitBadInput = 2,          // missing or corrupt bundle, image, arguments
    kExitMismatch = 4,          // golden output check failed
    kExitMissingDependency = 5  // TensorRT backend not compiled in, no CUDA GPU
};

class Error : public std::runtime_error {
public:
    Error(int exit_code, const std::string& message) : std::runtime_error(message), exit_code_(exit_code) {}
    int exit_code() const noexcept { return exit_code_; }

private:
    int exit_code_;
};

// The first line of a message: library errors (ONNX Runtime, OpenCV) can span several lines.
std::string first_line(const std::string& text);

}  // namespace segdeploy
