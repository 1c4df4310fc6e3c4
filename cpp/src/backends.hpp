// Backend factories. Each lives in its own translation unit so that the ONNX Runtime path compiles without any
// CUDA or TensorRT header, and trt_backend.cpp is compiled only when CMake finds TensorRT and CUDA.
#pragma once

#include <memory>

#include "segdeploy/segmenter.hpp"

namespace segdeploy::detail {

std::unique_ptr<Backend> make_ort_backend(const Manifest& manifest, const Options& options);
std::string ort_version();

#ifdef SEGDEPLOY_HAVE_TENSORRT
std::unique_ptr<Backend> make_trt_backend(const Manifest& manifest, const Options& options);
std::string trt_version();
#endif

}  // namespace segdeploy::detail
