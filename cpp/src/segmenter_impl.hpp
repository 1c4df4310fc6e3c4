// Segmenter's private state, shared by segmenter.cpp, stream.cpp (run_stream) and golden.cpp (check_golden).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include "backends.hpp"
#include "frames.hpp"
#include "segdeploy/segmenter.hpp"

namespace segdeploy {

using Clock = std::chrono::steady_clock;

inline double ms_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

// Per-lane state on the segdeploy side: the frames a stream decoded into it, their start times, and scratch.
struct LaneState {
    detail::FrameScratch scratch;
    std::vector<cv::Mat> frames;               // run_stream: the frames of this lane's batch
    std::vector<Clock::time_point> started;    // run_stream: when each frame's reading began
    int64_t count = 0;                         // real frames in the lane
    int64_t first_index = 0;                   // run_stream: source index of frames[0]
    Shape shape;                               // the input shape written into the lane
    cv::Mat map;                               // class map at the output's size
    std::vector<float> best;                   // argmax scratch
    detail::NearestResize resize;
    std::vector<cv::Mat> classmaps;            // run_stream: class maps at the frames' sizes
};

struct Segmenter::Impl {
    Manifest manifest;
    BackendKind kind = BackendKind::OnnxRuntime;
    Options options;
    std::unique_ptr<detail::Backend> backend;
    LaneState lanes[detail::Backend::kLanes];

    // Items per run for `frames` frames: the fixed batch, else the frames within the runtime's batch range.
    int64_t items_for(int64_t frames) const {
        if (manifest.pipeline.fixed_batch) return *manifest.pipeline.fixed_batch;
        const auto range = backend->batch_range();
        return std::max(frames, range.first);
    }

    int64_t max_batch() const {
        if (manifest.pipeline.fixed_batch) return *manifest.pipeline.fixed_batch;
        return std::min<int64_t>(backend->batch_range().second, 1 << 16);
    }

    cv::Size run_size(cv::Size frame) const {
        return detail::run_size(manifest.pipeline, frame, backend->side_range(true), backend->side_range(false));
    }

    // Preprocesses frames[0..n) (checked, of one size) into lane `l`'s input.
    void fill(int l, const cv::Mat* frames, int64_t n) {
        LaneState& lane = lanes[l];
        const cv::Size size = run_size(frames[0].size());
        const int64_t items = items_for(n);
        lane.shape = detail::input_shape(manifest.pipeline, items, size);
        void* data = backend->input(l, lane.shape);
        for (int64_t i = 0; i < n; ++i)
            detail::write_input_item(manifest.pipeline, frames[i], lane.shape, i, lane.scratch, data);
        for (int64_t i = n; i < items; ++i) detail::copy_input_item(manifest.pipeline, lane.shape, n - 1, i, data);
        lane.count = n;
    }

    // Class maps of lane `l`'s output for frames[0..n), at the frames' size.
    void finish(int l, const detail::HostView& out, const cv::Mat* frames, int64_t n, cv::Mat* classmaps) {
        LaneState& lane = lanes[l];
        for (int64_t i = 0; i < n; ++i) {
            detail::output_classmap(manifest.pipeline, out, i, lane.map, lane.best);
            if (lane.map.size() == frames[i].size()) {
                classmaps[i].create(lane.map.size(), CV_32S);
                lane.map.copyTo(classmaps[i]);
            } else {
                lane.resize(lane.map, classmaps[i], frames[i].size());
            }
        }
    }

    FrameTiming run_frames(const cv::Mat* frames, int64_t n, cv::Mat* classmaps) {
        if (n < 1) throw Error(kExitBadInput, "no frames to run");
        for (int64_t i = 0; i < n; ++i) {
            detail::check_frame(frames[i], options.max_pixels);
            if (frames[i].size() != frames[0].size())
                throw Error(kExitBadInput, "a batch needs frames of one size, got " + std::to_string(frames[0].cols) +
                                               "x" + std::to_string(frames[0].rows) + " and " +
                                               std::to_string(frames[i].cols) + "x" + std::to_string(frames[i].rows));
        }
        FrameTiming timing;
        const auto start = Clock::now();
        const int64_t chunk = max_batch();
        for (int64_t first = 0; first < n; first += chunk) {
            const int64_t count = std::min(chunk, n - first);
            fill(0, frames + first, count);
            backend->submit(0);
            double model_ms = 0.0;
            const detail::HostView out = backend->wait(0, &model_ms);
            timing.model_ms += model_ms;
            finish(0, out, frames + first, count, classmaps + first);
        }
        timing.total_ms = ms_between(start, Clock::now());
        return timing;
    }
};

}  // namespace segdeploy
