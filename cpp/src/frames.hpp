// The frame-side steps of the pipeline (segdeploy/frames.py in C++): run size, frame to input item, output to
// class map, nearest-neighbour resize back. Every function writes into buffers it is given and reuses the scratch
// it keeps, so a stream of same-sized frames allocates nothing after the first.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>

#include "backends.hpp"
#include "segdeploy/manifest.hpp"

namespace segdeploy::detail {

// The (width, height) a frame runs at: the fixed size, or each side rounded to the nearest multiple of
// size_multiple (halves up) within [min_size, max_size] and the runtime's own [lo, hi]. Throws Error(kExitBadInput)
// when no valid size exists.
cv::Size run_size(const FramePipeline& p, cv::Size frame, std::pair<int64_t, int64_t> height_range,
                  std::pair<int64_t, int64_t> width_range);

// The model input shape for `batch` items at `size`, in the pipeline's layout.
Shape input_shape(const FramePipeline& p, int64_t batch, cv::Size size);

// Checks a frame before anything is allocated for it: 8-bit, 1/3/4 channels, at most `max_pixels`.
void check_frame(const cv::Mat& frame, int64_t max_pixels);

// Per-lane scratch images for color conversion and resizing.
struct FrameScratch {
    cv::Mat converted, resized;
};

// Converts, resizes and normalizes one frame into batch item `item` of an input buffer shaped `shape`.
void write_input_item(const FramePipeline& p, const cv::Mat& frame, const Shape& shape, int64_t item,
                      FrameScratch& scratch, void* data);

// Copies batch item `from` of an input buffer over item `to` (filling a fixed batch).
void copy_input_item(const FramePipeline& p, const Shape& shape, int64_t from, int64_t to, void* data);

// The class map (CV_32S, the output's height and width) of batch item `item`: the values of a class-map output,
// else the first maximum over the class axis, or for one class the threshold.
// `best` is scratch (the best scores of a tile of pixels), kept by the caller.
void output_classmap(const FramePipeline& p, const HostView& output, int64_t item, cv::Mat& map,
                     std::vector<float>& best);

// OpenCV's INTER_NEAREST (source index floor(x * src / dst), computed as OpenCV does) with the index tables kept
// between calls of the same sizes.
class NearestResize {
public:
    void operator()(const cv::Mat& src, cv::Mat& dst, cv::Size size);

private:
    cv::Size src_, dst_;
    std::vector<int> rows_, cols_;
};

// A BGR image of a class map in `palette` (RGB), optionally blended over `frame`.
void paint(const cv::Mat& classmap, const std::vector<std::array<unsigned char, 3>>& palette, cv::Mat& bgr,
           const cv::Mat* frame, double alpha);

}  // namespace segdeploy::detail
