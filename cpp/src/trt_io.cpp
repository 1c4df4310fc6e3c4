#include "trt_io.hpp"

#include <cstring>
#include <sstream>
#include <vector>

namespace segdeploy::detail {

namespace {

std::vector<std::string> split_version(const std::string& text) {
    std::vector<std::string> parts;
    std::stringstream stream(text);
    std::string part;
    while (std::getline(stream, part, '.')) parts.push_back(part);
    return parts;
}

template <typename T>
T read_elem(const unsigned char* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

}  // namespace

std::string tensorrt_version_mismatch(const std::string& wanted, const std::string& have) {
    const auto w = split_version(wanted), h = split_version(have);
    if (w.size() < 3)
        return "the manifest's TensorRT version '" + wanted +
               "' does not name an exact release (major.minor.patch); plans load only on the release that built them";
    for (std::size_t i = 0; i < w.size(); ++i)
        if (i >= h.size() || w[i] != h[i]) return "built with TensorRT " + wanted + ", this program runs " + have;
    return "";
}

std::size_t elem_size(Elem elem) {
    switch (elem) {
        case Elem::F32: return 4;
        case Elem::F16: return 2;
        case Elem::I32: return 4;
        case Elem::I64: return 8;
        case Elem::U8: return 1;
    }
    return 1;
}

DType linear_dtype(Elem elem) {
    switch (elem) {
        case Elem::F32:
        case Elem::F16: return DType::Float32;
        case Elem::I32: return DType::Int32;
        case Elem::I64: return DType::Int64;
        case Elem::U8: return DType::UInt8;
    }
    return DType::Float32;
}

std::size_t padded_elements(const Shape& shape, int vectorized_dim, int components) {
    std::size_t n = 1;
    for (int i = 0; i < shape.rank; ++i) {
        int64_t d = shape[i];
        if (i == vectorized_dim && components > 1) d = (d + components - 1) / components * components;
        n *= static_cast<std::size_t>(d);
    }
    return n;
}

float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {  // subnormal: normalize
            exponent = 127 - 15 + 1;
            while (!(mantissa & 0x400)) mantissa <<= 1, --exponent;
            bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
        }
    } else if (exponent == 31) {
        bits = sign | 0x7f800000 | (mantissa << 13);  // inf, NaN
    } else {
        bits = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

void to_linear(const void* src, Elem elem, Layout layout, int components, const Shape& shape, void* dst) {
    const auto* in = static_cast<const unsigned char*>(src);
    const std::size_t in_size = elem_size(elem);
    const std::size_t out_size = dtype_size(linear_dtype(elem));
    auto copy_one = [&](std::size_t from, std::size_t to) {
        unsigned char* out = static_cast<unsigned char*>(dst) + to * out_size;
        if (elem == Elem::F16) {
            const float f = half_to_float(read_elem<uint16_t>(in + from * in_size));
            std::memcpy(out, &f, sizeof f);
        } else {
            std::memcpy(out, in + from * in_size, in_size);
        }
    };
    const std::size_t count = shape.count();
    if (layout == Layout::Linear) {
        if (elem != Elem::F16) {
            std::memcpy(dst, src, count * in_size);
            return;
        }
        for (std::size_t i = 0; i < count; ++i) copy_one(i, i);
        return;
    }
    const auto n = static_cast<std::size_t>(shape[0]), c = static_cast<std::size_t>(shape[1]);
    const auto h = static_cast<std::size_t>(shape[2]), w = static_cast<std::size_t>(shape[3]);
    const auto v = static_cast<std::size_t>(components < 1 ? 1 : components);
    const std::size_t blocks = (c + v - 1) / v, padded = blocks * v;
    std::size_t to = 0;
    for (std::size_t b = 0; b < n; ++b)
        for (std::size_t k = 0; k < c; ++k)
            for (std::size_t y = 0; y < h; ++y)
                for (std::size_t x = 0; x < w; ++x, ++to) {
                    const std::size_t from = layout == Layout::ChannelVectorized
                                                 ? (((b * blocks + k / v) * h + y) * w + x) * v + k % v
                                                 : ((b * h + y) * w + x) * padded + k;
                    copy_one(from, to);
                }
}

}  // namespace segdeploy::detail
