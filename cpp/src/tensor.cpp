#include "segdeploy/tensor.hpp"

#include <cstring>
#include <fstream>
#include <numeric>
#include <regex>
#include <sstream>

#include "segdeploy/error.hpp"

namespace segdeploy {

std::string first_line(const std::string& text) {
    const auto start = text.find_first_not_of(" \t\r\n");
    if (start == std::string::npos) return "unknown error";
    const auto end = text.find_first_of("\r\n", start);
    return text.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

std::size_t dtype_size(DType dtype) {
    switch (dtype) {
        case DType::UInt8: return 1;
        case DType::Int32: return 4;
        case DType::Int64: return 8;
        case DType::Float32: return 4;
    }
    return 0;
}

std::string dtype_name(DType dtype) {
    switch (dtype) {
        case DType::UInt8: return "uint8";
        case DType::Int32: return "int32";
        case DType::Int64: return "int64";
        case DType::Float32: return "float32";
    }
    return "?";
}

DType dtype_from_name(const std::string& name) {
    if (name == "uint8") return DType::UInt8;
    if (name == "int32") return DType::Int32;
    if (name == "int64") return DType::Int64;
    if (name == "float32") return DType::Float32;
    throw Error(kExitBadInput, "unsupported dtype '" + name + "' (expected uint8, int32, int64 or float32)");
}

Tensor::Tensor(DType dtype_, std::vector<int64_t> shape_) : dtype(dtype_), shape(std::move(shape_)) {
    data.assign(count() * dtype_size(dtype), 0);
}

std::size_t Tensor::count() const {
    return std::accumulate(shape.begin(), shape.end(), std::size_t{1},
                           [](std::size_t a, int64_t b) { return a * static_cast<std::size_t>(b); });
}

double Tensor::at(std::size_t i) const {
    switch (dtype) {
        case DType::UInt8: return as<uint8_t>()[i];
        case DType::Int32: return as<int32_t>()[i];
        case DType::Int64: return static_cast<double>(as<int64_t>()[i]);
        case DType::Float32: return as<float>()[i];
    }
    return 0.0;
}

Shape::Shape(std::initializer_list<int64_t> dims) {
    if (dims.size() > static_cast<std::size_t>(kMaxRank)) throw Error(kExitBadInput, "tensor rank above 8");
    for (const int64_t v : dims) d[static_cast<std::size_t>(rank++)] = v;
}

Shape::Shape(const std::vector<int64_t>& dims) {
    if (dims.size() > static_cast<std::size_t>(kMaxRank))
        throw Error(kExitBadInput, "tensor rank " + std::to_string(dims.size()) + " is above " +
                                       std::to_string(kMaxRank));
    rank = static_cast<int>(dims.size());
    for (int i = 0; i < rank; ++i) d[static_cast<std::size_t>(i)] = dims[static_cast<std::size_t>(i)];
}

std::size_t Shape::count() const {
    std::size_t n = 1;
    for (int i = 0; i < rank; ++i) n *= static_cast<std::size_t>(d[static_cast<std::size_t>(i)]);
    return n;
}

std::vector<int64_t> Shape::vec() const { return std::vector<int64_t>(d.begin(), d.begin() + rank); }

bool Shape::operator==(const Shape& other) const {
    if (rank != other.rank) return false;
    for (int i = 0; i < rank; ++i)
        if (d[static_cast<std::size_t>(i)] != other.d[static_cast<std::size_t>(i)]) return false;
    return true;
}

std::string format_shape(const Shape& shape) { return format_shape(shape.vec()); }

std::string format_shape(const std::vector<int64_t>& shape) {
    std::string out;
    for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? "x" : "") + std::to_string(shape[i]);
    return out.empty() ? "scalar" : out;
}

// ----------------------------------------------------------------------------------------------------- .npy
// Format: numpy.org/doc/stable/reference/generated/numpy.lib.format.html. Magic "\x93NUMPY", major/minor
// version bytes, header length (uint16 for 1.0, uint32 for 2.0/3.0), then a Python dict literal with 'descr',
// 'fortran_order' and 'shape', padded with spaces to a multiple of 64 bytes and ending in '\n'.

namespace {

const char kMagic[] = "\x93NUMPY";

std::string descr_for(DType dtype) {
    switch (dtype) {
        case DType::UInt8: return "|u1";
        case DType::Int32: return "<i4";
        case DType::Int64: return "<i8";
        case DType::Float32: return "<f4";
    }
    return "";
}

DType dtype_from_descr(const std::string& descr, const std::string& where) {
    if (descr == "|u1" || descr == "<u1") return DType::UInt8;
    if (descr == "<i4") return DType::Int32;
    if (descr == "<i8") return DType::Int64;
    if (descr == "<f4") return DType::Float32;
    throw Error(kExitBadInput, where + ": unsupported .npy dtype '" + descr +
                                   "' (expected little-endian uint8, int32, int64 or float32)");
}

}  // namespace

Tensor read_npy(const std::filesystem::path& path) {
    const std::string where = path.string();
    std::ifstream file(path, std::ios::binary);
    if (!file) throw Error(kExitBadInput, where + ": cannot open (missing or unreadable)");
    char magic[6];
    unsigned char version[2];
    if (!file.read(magic, 6) || std::memcmp(magic, kMagic, 6) != 0 ||
        !file.read(reinterpret_cast<char*>(version), 2))
        throw Error(kExitBadInput, where + ": not a .npy file");
    uint32_t header_len = 0;
    if (version[0] == 1) {
        unsigned char b[2];
        if (!file.read(reinterpret_cast<char*>(b), 2)) throw Error(kExitBadInput, where + ": truncated .npy header");
        header_len = b[0] | (b[1] << 8);
    } else if (version[0] == 2 || version[0] == 3) {
        unsigned char b[4];
        if (!file.read(reinterpret_cast<char*>(b), 4)) throw Error(kExitBadInput, where + ": truncated .npy header");
        header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
    } else {
        throw Error(kExitBadInput, where + ": unsupported .npy version " + std::to_string(version[0]));
    }
    if (header_len > (1u << 20)) throw Error(kExitBadInput, where + ": implausible .npy header length");
    std::string header(header_len, '\0');
    if (!file.read(header.data(), header_len)) throw Error(kExitBadInput, where + ": truncated .npy header");

    std::smatch m;
    if (!std::regex_search(header, m, std::regex(R"('descr'\s*:\s*'([^']*)')")))
        throw Error(kExitBadInput, where + ": .npy header has no 'descr'");
    const DType dtype = dtype_from_descr(m[1].str(), where);
    if (!std::regex_search(header, m, std::regex(R"('fortran_order'\s*:\s*(True|False))")))
        throw Error(kExitBadInput, where + ": .npy header has no 'fortran_order'");
    if (m[1].str() == "True") throw Error(kExitBadInput, where + ": Fortran-order .npy files are not supported");
    if (!std::regex_search(header, m, std::regex(R"('shape'\s*:\s*\(([^)]*)\))")))
        throw Error(kExitBadInput, where + ": .npy header has no 'shape'");
    std::vector<int64_t> shape;
    std::stringstream dims(m[1].str());
    std::string item;
    while (std::getline(dims, item, ',')) {
        const auto first = item.find_first_not_of(" \t");
        if (first == std::string::npos) continue;  // the trailing comma of a 1-tuple
        try {
            std::size_t used = 0;
            const long long v = std::stoll(item.substr(first), &used);
            if (v < 0) throw std::invalid_argument("negative");
            shape.push_back(v);
        } catch (const std::exception&) {
            throw Error(kExitBadInput, where + ": bad .npy shape (" + m[1].str() + ")");
        }
    }

    Tensor tensor(dtype, shape);
    if (!file.read(reinterpret_cast<char*>(tensor.data.data()), static_cast<std::streamsize>(tensor.bytes())))
        throw Error(kExitBadInput, where + ": truncated .npy data (expected " + std::to_string(tensor.bytes()) +
                                       " bytes for shape " + format_shape(shape) + ")");
    return tensor;
}

void write_npy(const std::filesystem::path& path, const Tensor& tensor) {
    std::string dims;
    for (auto d : tensor.shape) dims += std::to_string(d) + ", ";
    if (tensor.shape.size() > 1) dims.resize(dims.size() - 2);  // "(3,)" keeps its comma, "(1, 3)" does not
    else if (!dims.empty()) dims.resize(dims.size() - 1);
    std::string header = "{'descr': '" + descr_for(tensor.dtype) + "', 'fortran_order': False, 'shape': (" + dims +
                         "), }";
    const std::size_t unpadded = 6 + 2 + 2 + header.size() + 1;
    header.append((64 - unpadded % 64) % 64, ' ');
    header.push_back('\n');
    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    if (!file) throw Error(kExitBadInput, "cannot write " + path.string());
    const unsigned char version[2] = {1, 0};
    const unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                                  static_cast<unsigned char>(header.size() >> 8)};
    file.write(kMagic, 6);
    file.write(reinterpret_cast<const char*>(version), 2);
    file.write(reinterpret_cast<const char*>(len), 2);
    file.write(header.data(), static_cast<std::streamsize>(header.size()));
    file.write(reinterpret_cast<const char*>(tensor.data.data()), static_cast<std::streamsize>(tensor.bytes()));
    if (!file) throw Error(kExitError, "failed writing " + path.string());
}

}  // namespace segdeploy
