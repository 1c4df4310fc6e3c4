#include "media.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include <opencv2/imgcodecs.hpp>

#include <fcntl.h>
#include <unistd.h>

#include "segdeploy/error.hpp"

namespace fs = std::filesystem;
using segdeploy::Error;
using segdeploy::kExitBadInput;
using segdeploy::kExitError;

namespace media {

namespace {

std::string lower_extension(const fs::path& path) {
    std::string ext = path.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    return ext;
}

uint32_t be32(const unsigned char* p) { return (uint32_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3]; }
uint16_t be16(const unsigned char* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
int32_t le32(const unsigned char* p) {
    return static_cast<int32_t>(uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24));
}

std::optional<cv::Size> jpeg_size(std::ifstream& file) {
    // Segments after SOI: FF marker, 2-byte big-endian length; a SOFn segment holds precision, height, width.
    unsigned char b[8];
    for (int segments = 0; segments < 10000; ++segments) {
        int c = file.get();
        while (c == 0xFF) c = file.get();  // fill bytes
        if (c == EOF) return std::nullopt;
        const int marker = c;
        if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;  // no length
        if (!file.read(reinterpret_cast<char*>(b), 2)) return std::nullopt;
        const int length = be16(b);
        if (length < 2) return std::nullopt;
        const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
        if (sof) {
            if (!file.read(reinterpret_cast<char*>(b), 5)) return std::nullopt;
            return cv::Size(be16(b + 3), be16(b + 1));
        }
        file.seekg(length - 2, std::ios::cur);
    }
    return std::nullopt;
}

std::optional<cv::Size> pnm_size(std::ifstream& file) {
    // "P1".."P6", whitespace, optional # comments, width, height.
    long values[2];
    for (long& v : values) {
        int c = file.get();
        while (c != EOF && (std::isspace(c) || c == '#')) {
            if (c == '#')
                while (c != EOF && c != '\n') c = file.get();
            c = file.get();
        }
        if (c == EOF || !std::isdigit(c)) return std::nullopt;
        v = 0;
        while (c != EOF && std::isdigit(c) && v < (1L << 40)) v = v * 10 + (c - '0'), c = file.get();
    }
    return cv::Size(static_cast<int>(std::min(values[0], 1L << 30)), static_cast<int>(std::min(values[1], 1L << 30)));
}

// While alive, stderr goes to /dev/null: libpng and libjpeg print their own warnings when OpenCV decodes a
// damaged file, and the one error line must stay the only one.
class QuietStderr {
public:
    explicit QuietStderr(bool active) {
        if (!active) return;
        saved_ = ::dup(2);
        const int null_fd = ::open("/dev/null", O_WRONLY);
        if (saved_ >= 0 && null_fd >= 0) ::dup2(null_fd, 2);
        if (null_fd >= 0) ::close(null_fd);
    }
    ~QuietStderr() {
        if (saved_ < 0) return;
        ::dup2(saved_, 2);
        ::close(saved_);
    }
    QuietStderr(const QuietStderr&) = delete;
    QuietStderr& operator=(const QuietStderr&) = delete;

private:
    int saved_ = -1;
};

bool all_digits(const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

fs::path temp_beside(const fs::path& target, const std::string& extension) {
    return target.parent_path() /
           ("." + target.filename().string() + "." + std::to_string(::getpid()) + ".tmp" + extension);
}

}  // namespace

bool has_image_extension(const fs::path& path) {
    static const std::set<std::string> kImage = {".png", ".jpg",  ".jpeg", ".bmp", ".tif", ".tiff",
                                                 ".webp", ".ppm", ".pgm",  ".pnm", ".pbm", ".jp2"};
    return kImage.count(lower_extension(path)) > 0;
}

bool has_video_extension(const fs::path& path) {
    static const std::set<std::string> kVideo = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v",
                                                 ".mpg", ".mpeg", ".wmv", ".flv", ".ts",   ".3gp"};
    return kVideo.count(lower_extension(path)) > 0;
}

std::optional<cv::Size> image_header_size(const fs::path& path) {
    std::ifstream file(path, std::ios::binary);
    unsigned char h[26];
    if (!file.read(reinterpret_cast<char*>(h), 2)) return std::nullopt;
    if (h[0] == 0x89 && h[1] == 'P') {  // PNG: signature, then the IHDR chunk
        if (!file.read(reinterpret_cast<char*>(h + 2), 22) || std::string(h + 12, h + 16) != "IHDR")
            return std::nullopt;
        return cv::Size(static_cast<int>(std::min<uint32_t>(be32(h + 16), 1u << 30)),
                        static_cast<int>(std::min<uint32_t>(be32(h + 20), 1u << 30)));
    }
    if (h[0] == 0xFF && h[1] == 0xD8) return jpeg_size(file);
    if (h[0] == 'B' && h[1] == 'M') {  // BMP: BITMAPINFOHEADER width and height at 18 and 22
        if (!file.read(reinterpret_cast<char*>(h + 2), 24)) return std::nullopt;
        const int64_t w = std::abs(static_cast<int64_t>(le32(h + 18))), ht = std::abs(static_cast<int64_t>(le32(h + 22)));
        return cv::Size(static_cast<int>(std::min<int64_t>(w, 1 << 30)), static_cast<int>(std::min<int64_t>(ht, 1 << 30)));
    }
    if (h[0] == 'P' && h[1] >= '1' && h[1] <= '6') return pnm_size(file);
    return std::nullopt;
}

// ----------------------------------------------------------------------------------------------- FrameReader
FrameReader::FrameReader(const std::string& input, int64_t max_pixels, bool verbose)
    : input_(input), max_pixels_(max_pixels), verbose_(verbose) {
    std::error_code ec;
    const fs::path path(input);
    if (fs::is_directory(path, ec)) {
        kind_ = InputKind::Directory;
        std::map<std::string, fs::path> stems;
        for (const auto& entry : fs::directory_iterator(path, ec)) {
            if (!entry.is_regular_file(ec) || !has_image_extension(entry.path())) continue;
            images_.push_back(entry.path());
        }
        std::sort(images_.begin(), images_.end());
        if (images_.empty()) throw Error(kExitBadInput, input + ": no images in this directory");
        for (const auto& image : images_) {
            const auto [it, fresh] = stems.emplace(image.stem().string(), image);
            if (!fresh)
                throw Error(kExitBadInput, input + ": " + it->second.filename().string() + " and " +
                                               image.filename().string() + " would write the same NAME.png");
            if (const auto size = image_header_size(image)) check_size(*size, image.string());
        }
    } else if (fs::is_regular_file(path, ec) && has_image_extension(path)) {
        kind_ = InputKind::Image;
        images_.push_back(path);
        if (const auto size = image_header_size(path)) check_size(*size, input);
    } else if (fs::is_regular_file(path, ec) || all_digits(input) || input.find("://") != std::string::npos ||
               input.find('!') != std::string::npos) {
        QuietStderr quiet(!verbose_);
        if (fs::is_regular_file(path, ec)) {
            kind_ = InputKind::Video;
            capture_.open(input, cv::CAP_FFMPEG);
            if (!capture_.isOpened()) capture_.open(input, cv::CAP_ANY);
        } else if (all_digits(input)) {
            kind_ = InputKind::Camera;
            capture_.open(std::stoi(input), cv::CAP_ANY);
        } else {
            kind_ = InputKind::Stream;  // RTSP/HTTP through FFmpeg, "a ! b ! appsink" through GStreamer
            capture_.open(input, input.find('!') != std::string::npos ? cv::CAP_GSTREAMER : cv::CAP_ANY);
        }
        if (!capture_.isOpened())
            throw Error(kExitBadInput, input + ": OpenCV cannot open this as " +
                                           (kind_ == InputKind::Video    ? "a video (nor is it an image file)"
                                            : kind_ == InputKind::Camera ? "a camera"
                                                                         : "a stream"));
        const cv::Size declared(static_cast<int>(capture_.get(cv::CAP_PROP_FRAME_WIDTH)),
                                static_cast<int>(capture_.get(cv::CAP_PROP_FRAME_HEIGHT)));
        if (declared.width > 0 && declared.height > 0) check_size(declared, input);
        fps_ = capture_.get(cv::CAP_PROP_FPS);
        if (!(fps_ > 0 && fps_ < 1000)) fps_ = 0.0;
    } else {
        throw Error(kExitBadInput, input + ": no such image, directory or video file");
    }
}

void FrameReader::check_size(cv::Size size, const std::string& what) const {
    const int64_t pixels = static_cast<int64_t>(size.width) * size.height;
    if (pixels > max_pixels_)
        throw Error(kExitBadInput, what + ": frame " + std::to_string(size.width) + "x" + std::to_string(size.height) +
                                       " has " + std::to_string(pixels) + " pixels, above the limit of " +
                                       std::to_string(max_pixels_) + " (--max-pixels)");
}

cv::Mat FrameReader::read_image(const fs::path& path) const {
    cv::Mat frame;
    {
        QuietStderr quiet(!verbose_);
        // IMREAD_COLOR: 8-bit BGR whatever the file holds (grey, 16-bit, alpha), as segdeploy's Python side reads.
        frame = cv::imread(path.string(), cv::IMREAD_COLOR);
    }
    if (frame.empty())
        throw Error(kExitBadInput, path.string() + ": not an image OpenCV can read (or above the pixel limit)");
    return frame;
}

bool FrameReader::next(cv::Mat& frame) {
    if (kind_ == InputKind::Image || kind_ == InputKind::Directory) {
        if (next_image_ >= images_.size()) return false;
        frame = read_image(images_[next_image_++]);
        return true;
    }
    return capture_.read(frame) && !frame.empty();
}

std::string FrameReader::name(int64_t index) const {
    if (kind_ == InputKind::Image || kind_ == InputKind::Directory)
        return images_.at(static_cast<std::size_t>(index)).stem().string();
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "frame_%06lld", static_cast<long long>(index));
    return buffer;
}

// ----------------------------------------------------------------------------------------------- MaskWriter
MaskWriter::MaskWriter(const std::string& target, bool single_image_input, bool allow_video, const std::string& fourcc)
    : target_(target) {
    const fs::path path(target);
    std::error_code ec;
    const bool trailing_slash = !target.empty() && target.back() == '/';
    if (fs::is_directory(path, ec) || trailing_slash) {
        kind_ = OutputKind::Directory;
        const fs::path dir = trailing_slash ? fs::path(target.substr(0, target.size() - 1)) : path;
        const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
        if (!fs::is_directory(dir, ec) && !fs::is_directory(parent, ec))
            throw Error(kExitBadInput, target + ": directory " + parent.string() + " does not exist");
        if (!fs::is_directory(dir, ec) && !fs::create_directory(dir, ec))
            throw Error(kExitBadInput, target + ": cannot create the directory (" + ec.message() + ")");
        target_ = dir.string();
        return;
    }
    const fs::path parent = path.has_parent_path() ? path.parent_path() : fs::path(".");
    if (!fs::is_directory(parent, ec))
        throw Error(kExitBadInput, target + ": directory " + parent.string() + " does not exist");
    const std::string ext = lower_extension(path);
    if (ext == ".png") {
        if (!single_image_input)
            throw Error(kExitBadInput, target + ": one PNG takes one image; give a directory (DIR/) or a video");
        kind_ = OutputKind::Image;
    } else if (allow_video && (ext == ".mp4" || ext == ".avi" || ext == ".mkv" || ext == ".mov")) {
        kind_ = OutputKind::Video;
        std::string code = fourcc.empty() ? (ext == ".avi" ? "MJPG" : ext == ".mkv" ? "FFV1" : "mp4v") : fourcc;
        if (code.size() != 4) throw Error(kExitBadInput, "--fourcc needs 4 characters, got '" + code + "'");
        fourcc_ = cv::VideoWriter::fourcc(code[0], code[1], code[2], code[3]);
        tmp_ = temp_beside(path, ext);
    } else {
        throw Error(kExitBadInput, target + (allow_video ? ": give a .png, a directory (DIR/) or a video (.mp4, .avi, "
                                                           ".mkv, .mov)"
                                                         : ": give a .png or a directory (DIR/)"));
    }
}

MaskWriter::~MaskWriter() {
    if (kind_ == OutputKind::Video && !finished_) {
        video_.release();
        std::error_code ec;
        fs::remove(tmp_, ec);  // a stream that failed leaves no half-written video
    }
}

void MaskWriter::write(const std::string& name, const cv::Mat& image, double fps) {
    switch (kind_) {
        case OutputKind::Image: write_png(target_, image); return;
        case OutputKind::Directory: write_png(fs::path(target_) / (name + ".png"), image); return;
        case OutputKind::Video:
            if (!video_.isOpened()) {
                video_size_ = image.size();
                video_.open(tmp_.string(), cv::CAP_FFMPEG, fourcc_, fps > 0 ? fps : 25.0, video_size_,
                            image.channels() == 3);
                if (!video_.isOpened())
                    throw Error(kExitBadInput, target_ + ": OpenCV cannot write this video (codec or container)");
            }
            if (image.size() != video_size_)
                throw Error(kExitBadInput, target_ + ": a video needs frames of one size, got " +
                                               std::to_string(video_size_.width) + "x" +
                                               std::to_string(video_size_.height) + " then " +
                                               std::to_string(image.cols) + "x" + std::to_string(image.rows));
            video_.write(image);
            return;
    }
}

void MaskWriter::finish() {
    if (kind_ != OutputKind::Video || finished_) return;
    if (!video_.isOpened()) throw Error(kExitBadInput, target_ + ": the input had no frames to write");
    video_.release();
    fs::rename(tmp_, target_);
    finished_ = true;
}

void write_png(const fs::path& path, const cv::Mat& image) {
    const fs::path tmp = temp_beside(path, ".png");
    try {
        if (!cv::imwrite(tmp.string(), image)) throw Error(kExitError, "cannot write " + path.string());
        fs::rename(tmp, path);
    } catch (...) {
        std::error_code ec;
        fs::remove(tmp, ec);
        throw;
    }
}

}  // namespace media
