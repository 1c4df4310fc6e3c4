// A dense host tensor (C order) and a minimal .npy reader/writer for the dtypes a bundle uses.
#pragma once

#include <array>
#include <cstddef>
#include <initializer_list>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace segdeploy {

enum class DType { UInt8, Int32, Int64, Float32 };

// A shape of rank <= 8 held inline: the per-frame paths use it so that they never touch the heap.
struct Shape {
    static constexpr int kMaxRank = 8;
    int rank = 0;
    std::array<int64_t, kMaxRank> d{};

    Shape() = default;
    Shape(std::initializer_list<int64_t> dims);
    explicit Shape(const std::vector<int64_t>& dims);  // throws Error(kExitBadInput) above kMaxRank
    int64_t operator[](int i) const { return d[static_cast<std::size_t>(i)]; }
    int64_t& operator[](int i) { return d[static_cast<std::size_t>(i)]; }
    std::size_t count() const;  // product of the dimensions
    std::vector<int64_t> vec() const;
    bool operator==(const Shape& other) const;
    bool operator!=(const Shape& other) const { return !(*this == other); }
};

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
std::string format_shape(const Shape& shape);

// Reads little-endian, C-order .npy files (format 1.0-3.0) of uint8, int32, int64 or float32.
// Throws Error(kExitBadInput) naming the file for anything else.
Tensor read_npy(const std::filesystem::path& path);
void write_npy(const std::filesystem::path& path, const Tensor& tensor);

}  // namespace segdeploy
