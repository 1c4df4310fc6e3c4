// What the TensorRT backend needs that does not depend on TensorRT's headers: the exact version rule, and reading
// output tensors a plan stores in vectorized or channel-last formats (TensorFormat kCHW2/4/16/32, kHWC, kHWC8/16)
// or in half precision into linear NCHW with float32 scores.
#pragma once

#include <cstdint>
#include <string>

#include "segdeploy/tensor.hpp"

namespace segdeploy::detail {

// A plan deserializes only on the TensorRT version that built it. `wanted` (the manifest's, e.g. "10.3.0" as
// Python's tensorrt.__version__ or "10.16.0.72") must name at least major.minor.patch, and each component it names
// must equal the library's ("10.3.0.26"). Returns an empty string when they match, else why not.
std::string tensorrt_version_mismatch(const std::string& wanted, const std::string& have);

// Element types the backend reads.
enum class Elem { F32, F16, I32, I64, U8 };
std::size_t elem_size(Elem elem);
DType linear_dtype(Elem elem);  // F16 reads as float32

// The memory layout of a tensor in a plan.
enum class Layout {
    Linear,             // kLINEAR: row-major
    ChannelVectorized,  // kCHW2/4/16/32: [N][ceil(C/v)][H][W][v]
    ChannelLast,        // kHWC (v = 1), kHWC8, kHWC16: [N][H][W][roundup(C, v)]
};

// Elements a buffer of `shape` holds in that layout (padding included): dimension `vectorized_dim` rounded up to a
// multiple of `components`.
std::size_t padded_elements(const Shape& shape, int vectorized_dim, int components);

// Copies a 4-D tensor (N, C, H, W) from its plan layout into linear NCHW, converting half to float32. Linear
// tensors of any rank are copied (and converted) as they are.
void to_linear(const void* src, Elem elem, Layout layout, int components, const Shape& shape, void* dst);

float half_to_float(uint16_t h);

}  // namespace segdeploy::detail
