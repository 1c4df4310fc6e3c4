#include "frames.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include <opencv2/imgproc.hpp>

#include "segdeploy/error.hpp"

namespace segdeploy::detail {

namespace {

thread_local ExternalCall g_external = ExternalCall::None;

// The nearest valid size: FramePipeline._nearest, with the runtime's range folded into [lo, hi].
int64_t nearest_valid(int64_t side, int64_t multiple, int64_t lo, int64_t hi, const char* axis) {
    const int64_t first = (lo + multiple - 1) / multiple * multiple;
    const int64_t last = hi / multiple * multiple;
    if (last < first)
        throw Error(kExitBadInput, std::string("no valid ") + axis + ": no multiple of " + std::to_string(multiple) +
                                       " lies in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    const int64_t rounded = (side + multiple / 2) / multiple * multiple;  // halves round up
    return std::clamp(rounded, first, last);
}

// cv::cvtColor code from a frame's channels (grey, BGR, BGRA) to the model's; -1 when none is needed.
int convert_code(int frame_channels, int model_channels, bool rgb) {
    if (model_channels == 1) {
        if (frame_channels == 1) return -1;
        return frame_channels == 4 ? cv::COLOR_BGRA2GRAY : cv::COLOR_BGR2GRAY;
    }
    if (frame_channels == 1) return rgb ? cv::COLOR_GRAY2RGB : cv::COLOR_GRAY2BGR;
    if (frame_channels == 4) return rgb ? cv::COLOR_BGRA2RGB : cv::COLOR_BGRA2BGR;
    return rgb ? cv::COLOR_BGR2RGB : -1;
}

template <typename T>
void classes_from_ints(const T* src, std::size_t pixels, int32_t* dst) {
    for (std::size_t i = 0; i < pixels; ++i) dst[i] = static_cast<int32_t>(src[i]);
}

}  // namespace

ExternalScope::ExternalScope(ExternalCall kind) noexcept : saved_(g_external) { g_external = kind; }
ExternalScope::~ExternalScope() { g_external = saved_; }
ExternalCall current_external_call() noexcept { return g_external; }

cv::Size run_size(const FramePipeline& p, cv::Size frame, std::pair<int64_t, int64_t> height_range,
                  std::pair<int64_t, int64_t> width_range) {
    if (p.fixed_size)
        return {static_cast<int>(p.fixed_size->second), static_cast<int>(p.fixed_size->first)};
    auto pick = [&](int64_t side, std::pair<int64_t, int64_t> range, const char* axis) {
        const int64_t lo = std::max(p.min_size, range.first);
        int64_t hi = range.second;
        if (p.max_size) hi = std::min(hi, *p.max_size);
        return static_cast<int>(nearest_valid(side, p.size_multiple, lo, hi, axis));
    };
    return {pick(frame.width, width_range, "width"), pick(frame.height, height_range, "height")};
}

Shape input_shape(const FramePipeline& p, int64_t batch, cv::Size size) {
    if (p.layout == "NHWC") return Shape{batch, size.height, size.width, p.channels};
    return Shape{batch, p.channels, size.height, size.width};
}

void check_frame(const cv::Mat& frame, int64_t max_pixels) {
    if (frame.empty()) throw Error(kExitBadInput, "empty frame");
    if (frame.depth() != CV_8U || (frame.channels() != 1 && frame.channels() != 3 && frame.channels() != 4))
        throw Error(kExitBadInput, "frames must be 8-bit grey, BGR or BGRA images");
    if (static_cast<int64_t>(frame.cols) * frame.rows > max_pixels)
        throw Error(kExitBadInput, "frame " + std::to_string(frame.cols) + "x" + std::to_string(frame.rows) + " has " +
                                       std::to_string(static_cast<int64_t>(frame.cols) * frame.rows) +
                                       " pixels, above the limit of " + std::to_string(max_pixels) +
                                       " (--max-pixels)");
}

void write_input_item(const FramePipeline& p, const cv::Mat& frame, const Shape& shape, int64_t item,
                      FrameScratch& scratch, void* data) {
    const bool nhwc = p.layout == "NHWC";
    const int channels = p.channels;
    const cv::Size size(static_cast<int>(shape[nhwc ? 2 : 3]), static_cast<int>(shape[nhwc ? 1 : 2]));

    const cv::Mat* image = &frame;
    const int code = convert_code(frame.channels(), channels, p.color == "rgb");
    if (code >= 0) {
        ExternalScope opencv(ExternalCall::OpenCV);
        cv::cvtColor(frame, scratch.converted, code);
        image = &scratch.converted;
    }
    if (image->size() != size) {
        ExternalScope opencv(ExternalCall::OpenCV);
        cv::resize(*image, scratch.resized, size, 0, 0, cv::INTER_LINEAR);
        image = &scratch.resized;
    }

    const std::size_t pixels = static_cast<std::size_t>(size.area());
    const std::size_t per_item = pixels * static_cast<std::size_t>(channels);
    float mean[4] = {0, 0, 0, 0}, stdev[4] = {1, 1, 1, 1};
    for (int c = 0; c < channels && !p.normalize_in_graph; ++c) {
        mean[c] = p.mean.size() == 1 ? p.mean[0] : p.mean[static_cast<std::size_t>(c)];
        stdev[c] = p.std.size() == 1 ? p.std[0] : p.std[static_cast<std::size_t>(c)];
    }
    const bool normalize = !p.normalize_in_graph;
    const std::size_t base = static_cast<std::size_t>(item) * per_item;
    for (int y = 0; y < size.height; ++y) {
        const unsigned char* src = image->ptr<unsigned char>(y);
        const std::size_t row = static_cast<std::size_t>(y) * static_cast<std::size_t>(size.width);
        if (nhwc && p.dtype == DType::UInt8) {
            std::memcpy(static_cast<unsigned char*>(data) + base + row * channels, src,
                        static_cast<std::size_t>(size.width) * channels);
            continue;
        }
        for (int c = 0; c < channels; ++c) {
            // One channel of one row at a time: contiguous writes in NCHW.
            const std::size_t first = nhwc ? base + row * channels + c : base + c * pixels + row;
            const std::size_t step = nhwc ? static_cast<std::size_t>(channels) : 1;
            if (p.dtype == DType::UInt8) {
                auto* dst = static_cast<unsigned char*>(data) + first;
                for (int x = 0; x < size.width; ++x) dst[x * step] = src[x * channels + c];
                continue;
            }
            float* dst = static_cast<float*>(data) + first;
            const float m = mean[c], sd = stdev[c];
            for (int x = 0; x < size.width; ++x) {
                float f = static_cast<float>(src[x * channels + c]);
                // The float32 operations of (x / 255 - mean) / std in NumPy, in the same order.
                if (normalize) f = (f / 255.0f - m) / sd;
                dst[x * step] = f;
            }
        }
    }
}

void copy_input_item(const FramePipeline& p, const Shape& shape, int64_t from, int64_t to, void* data) {
    const std::size_t item_bytes = shape.count() / static_cast<std::size_t>(shape[0]) * dtype_size(p.dtype);
    auto* bytes = static_cast<unsigned char*>(data);
    std::memcpy(bytes + static_cast<std::size_t>(to) * item_bytes, bytes + static_cast<std::size_t>(from) * item_bytes,
                item_bytes);
}

void output_classmap(const FramePipeline& p, const HostView& out, int64_t item, cv::Mat& map,
                     std::vector<float>& best) {
    const Shape& s = out.shape;
    auto bad_shape = [&]() {
        return Error(kExitBadInput, "model output " + format_shape(s) + " does not fit output kind '" + p.output + "'");
    };
    if (p.output == "classmap") {
        if (!(s.rank == 3 || (s.rank == 4 && s[1] == 1)) || item >= s[0]) throw bad_shape();
        const int h = static_cast<int>(s[s.rank - 2]), w = static_cast<int>(s[s.rank - 1]);
        map.create(h, w, CV_32S);
        const std::size_t pixels = static_cast<std::size_t>(h) * static_cast<std::size_t>(w);
        const std::size_t offset = static_cast<std::size_t>(item) * pixels;
        auto* dst = map.ptr<int32_t>();
        switch (out.dtype) {
            case DType::Int32: std::memcpy(dst, static_cast<const int32_t*>(out.data) + offset, pixels * 4); break;
            case DType::Int64: classes_from_ints(static_cast<const int64_t*>(out.data) + offset, pixels, dst); break;
            case DType::UInt8: classes_from_ints(static_cast<const uint8_t*>(out.data) + offset, pixels, dst); break;
            case DType::Float32: throw bad_shape();
        }
        return;
    }
    if (s.rank != 4 || s[1] < 1 || item >= s[0] || out.dtype != DType::Float32) throw bad_shape();
    const int64_t classes = s[1];
    const int h = static_cast<int>(s[2]), w = static_cast<int>(s[3]);
    const std::size_t pixels = static_cast<std::size_t>(h) * static_cast<std::size_t>(w);
    const float* scores = static_cast<const float*>(out.data) + static_cast<std::size_t>(item * classes) * pixels;
    map.create(h, w, CV_32S);
    auto* dst = map.ptr<int32_t>();
    if (classes == 1) {
        for (std::size_t i = 0; i < pixels; ++i) dst[i] = scores[i] > p.threshold ? 1 : 0;
        return;
    }
    // numpy's argmax: the first maximum wins, and the first NaN if there is one (a NaN replaces a number; nothing
    // replaces a NaN). Tiles of pixels, class plane by class plane within a tile: the tile's best scores and classes
    // stay in L1, each plane is read contiguously, and the branch-free select (bitwise, not short-circuit, so there
    // is no control flow) lets the compiler vectorize it: about 5x faster than whole planes with || and &&.
    constexpr std::size_t kTile = 1024;
    best.resize(std::min(pixels, kTile));
    float* best_score = best.data();
    for (std::size_t first = 0; first < pixels; first += kTile) {
        const std::size_t n = std::min(kTile, pixels - first);
        int32_t* classes_out = dst + first;
        std::memcpy(best_score, scores + first, n * sizeof(float));
        std::fill(classes_out, classes_out + n, 0);
        for (int64_t c = 1; c < classes; ++c) {
            const float* plane = scores + static_cast<std::size_t>(c) * pixels + first;
            const auto index = static_cast<int32_t>(c);
            for (std::size_t i = 0; i < n; ++i) {
                const float v = plane[i], b = best_score[i];
                const bool take = static_cast<int>(v > b) | (static_cast<int>(v != v) & static_cast<int>(b == b));
                best_score[i] = take ? v : b;
                classes_out[i] = take ? index : classes_out[i];
            }
        }
    }
}

void NearestResize::operator()(const cv::Mat& src, cv::Mat& dst, cv::Size size) {
    CV_Assert(src.type() == CV_32S);
    if (src.size() != src_ || size != dst_) {
        // OpenCV's resizeNN: ifx = 1 / (dst / src) in double, sx = floor(x * ifx), clamped to the last column.
        const double ifx = 1.0 / (static_cast<double>(size.width) / src.cols);
        const double ify = 1.0 / (static_cast<double>(size.height) / src.rows);
        cols_.resize(static_cast<std::size_t>(size.width));
        rows_.resize(static_cast<std::size_t>(size.height));
        for (int x = 0; x < size.width; ++x)
            cols_[static_cast<std::size_t>(x)] = std::min(static_cast<int>(std::floor(x * ifx)), src.cols - 1);
        for (int y = 0; y < size.height; ++y)
            rows_[static_cast<std::size_t>(y)] = std::min(static_cast<int>(std::floor(y * ify)), src.rows - 1);
        src_ = src.size();
        dst_ = size;
    }
    dst.create(size, CV_32S);
    for (int y = 0; y < size.height; ++y) {
        const int32_t* row = src.ptr<int32_t>(rows_[static_cast<std::size_t>(y)]);
        int32_t* out = dst.ptr<int32_t>(y);
        for (int x = 0; x < size.width; ++x) out[x] = row[cols_[static_cast<std::size_t>(x)]];
    }
}

void paint(const cv::Mat& classmap, const std::vector<std::array<unsigned char, 3>>& palette, cv::Mat& bgr,
           const cv::Mat* frame, double alpha) {
    CV_Assert(classmap.type() == CV_32S);
    const bool blend = frame != nullptr && alpha < 1.0;
    if (blend) CV_Assert(frame->size() == classmap.size() && frame->depth() == CV_8U);
    bgr.create(classmap.size(), CV_8UC3);
    const int fc = blend ? frame->channels() : 0;
    const float a = static_cast<float>(alpha), b = 1.0f - a;
    for (int y = 0; y < classmap.rows; ++y) {
        const auto* classes = classmap.ptr<int32_t>(y);
        auto* out = bgr.ptr<cv::Vec3b>(y);
        const unsigned char* under = blend ? frame->ptr<unsigned char>(y) : nullptr;
        for (int x = 0; x < classmap.cols; ++x) {
            const int32_t c = classes[x];
            cv::Vec3b color(0, 0, 0);
            if (c >= 0 && static_cast<std::size_t>(c) < palette.size())
                color = cv::Vec3b(palette[c][2], palette[c][1], palette[c][0]);  // RGB palette, BGR image
            if (blend) {
                for (int k = 0; k < 3; ++k) {
                    const float f = under[x * fc + (fc == 1 ? 0 : k)];
                    color[k] = cv::saturate_cast<unsigned char>(a * color[k] + b * f);
                }
            }
            out[x] = color;
        }
    }
}

}  // namespace segdeploy::detail
