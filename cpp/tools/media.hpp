// segdeploy_infer's inputs and outputs: images, directories of images, videos, cameras and streams in; images,
// directories of PNGs and videos out. Frame sizes are checked against the pixel limit before anything is decoded
// where the container says them (image headers, video properties).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/videoio.hpp>

namespace media {

enum class InputKind { Image, Directory, Video, Camera, Stream };

// The width and height an image file's header declares (PNG, JPEG, BMP, PNM), without decoding it; nullopt for
// other formats or a header that cannot be read.
std::optional<cv::Size> image_header_size(const std::filesystem::path& path);

bool has_image_extension(const std::filesystem::path& path);
bool has_video_extension(const std::filesystem::path& path);

class FrameReader {
public:
    // Opens INPUT: an image file, a directory of images (sorted by name), a video file, a camera index ("0") or
    // a URL / GStreamer pipeline. Throws segdeploy::Error(kExitBadInput) for what cannot be opened or a frame size
    // above max_pixels that the input declares.
    FrameReader(const std::string& input, int64_t max_pixels, bool verbose);

    bool next(cv::Mat& frame);  // false at the end; throws for an unreadable image
    InputKind kind() const { return kind_; }
    bool single_image() const { return kind_ == InputKind::Image; }
    std::string name(int64_t index) const;  // an output file stem: the image's stem, or frame_000123
    double fps() const { return fps_; }     // the video's frame rate, 0 when unknown
    const std::string& input() const { return input_; }

private:
    void check_size(cv::Size size, const std::string& what) const;
    cv::Mat read_image(const std::filesystem::path& path) const;

    std::string input_;
    InputKind kind_ = InputKind::Image;
    int64_t max_pixels_;
    bool verbose_;
    std::vector<std::filesystem::path> images_;
    std::size_t next_image_ = 0;
    cv::VideoCapture capture_;
    double fps_ = 0.0;
};

enum class OutputKind { Image, Directory, Video };

// Where class maps go: one PNG, a directory of PNGs (NAME.png per frame) or a video. Files appear complete or not
// at all (written beside the target and renamed).
class MaskWriter {
public:
    // Checks the target before any inference: a .png file, a directory (existing, or ending in '/'), or a video
    // (.mp4, .avi, .mkv, .mov: fourcc mp4v, MJPG, FFV1 (lossless), mp4v unless `fourcc` is given).
    MaskWriter(const std::string& target, bool single_image_input, bool allow_video, const std::string& fourcc);
    ~MaskWriter();
    MaskWriter(const MaskWriter&) = delete;
    MaskWriter& operator=(const MaskWriter&) = delete;

    void write(const std::string& name, const cv::Mat& image, double fps);
    void finish();  // closes a video and moves it into place
    OutputKind kind() const { return kind_; }
    const std::string& target() const { return target_; }

private:
    std::string target_;
    OutputKind kind_;
    int fourcc_ = 0;
    std::filesystem::path tmp_;
    cv::VideoWriter video_;
    cv::Size video_size_;
    bool finished_ = false;
};

// Writes `image` to `path` (PNG) through a temporary file beside it.
void write_png(const std::filesystem::path& path, const cv::Mat& image);

}  // namespace media
