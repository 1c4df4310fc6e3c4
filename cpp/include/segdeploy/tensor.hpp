// A dense host tensor (C order) and a minimal .npy reader/writer for the dtypes a bundle uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace segdeploy {

enum class DType { UInt8, Int32, Int64, Float32 };

std::size_t dtype_size(DType dtype);
std::string dtype_name(DType dtype);  // the manifest's spelling: "uint8", "int32", "int64", "float32"
DType dtype_from_name(const std::string& name);  // throws Error(kExitBadInput) for any other name

struct Tensor {
    DType dtype = DType::Float32;
    std::vector<int64_t> shape;
    std::vector<unsigned char> data;  // count() * dtype_size(dtype) bytes

    Tensor() = default;
    Tensor(DType dtype, std::vector<int64_t> shape);  // zero-filled

    std::size_t count() const;
    std::size_t bytes() const { return data.size(); }
    template <typename T>
    T* as() { return reinterpret_cast<T*>(data.data()); }
    template <typename T>
    const T* as() const { return reinterpret_cast<const T*>(data.data()); }
    double at(std::size_t i) const;  // element i as a double, whatever the dtype
};

std::string format_shape(const std::vector<int64_t>& shape);  // "1x3x64x64"

// Reads little-endian, C-order .npy files (format 1.0-3.0) of uint8, int32, int64 or float32.
// Throws Error(kExitBadInput) naming the file for anything else.
Tensor read_npy(const std::filesystem::path& path);
void write_npy(const std::filesystem::path& path, const Tensor& tensor);

}  // namespace segdeploy
