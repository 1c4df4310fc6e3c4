// Segmenter::run_stream: frames from a source, results to a sink, in order.
//
// Pipelined, a worker thread reads and preprocesses into one lane while the calling thread runs the other lane.
// Lanes cycle free -> filled (worker) -> running (caller) -> free, so the worker only ever writes a lane nobody
// reads. On TensorRT with two execution contexts two lanes may run at once, and the caller waits for each and hands
// its results to the sink. On a synchronous runtime (ONNX Runtime) the caller only runs: the worker turns a lane's
// output into class maps and hands them to the sink before it refills the lane, so that all the work around the
// model overlaps the model's next run.
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "segmenter_impl.hpp"

namespace segdeploy {

namespace {

constexpr int kEnd = -1;

class LaneQueues {
public:
    LaneQueues() {
        for (int l = 0; l < detail::Backend::kLanes; ++l) free_.push_back(l);
    }
    int take_free() {  // kEnd once stopped
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] { return stopped_ || !free_.empty(); });
        if (stopped_) return kEnd;
        const int l = free_.front();
        free_.pop_front();
        return l;
    }
    void give_free(int l) { push(free_, l); }
    int take_free_now() {  // kEnd when no lane is free
        std::lock_guard<std::mutex> lock(mutex_);
        if (free_.empty()) return kEnd;
        const int l = free_.front();
        free_.pop_front();
        return l;
    }
    void give_filled(int l) { push(filled_, l); }  // kEnd: the source is done
    int take_filled() {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] { return !filled_.empty(); });
        const int l = filled_.front();
        filled_.pop_front();
        return l;
    }
    void stop() {
        std::lock_guard<std::mutex> lock(mutex_);
        stopped_ = true;
        changed_.notify_all();
    }

private:
    void push(std::deque<int>& queue, int l) {
        std::lock_guard<std::mutex> lock(mutex_);
        queue.push_back(l);
        changed_.notify_all();
    }
    std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<int> free_, filled_;
    bool stopped_ = false;
};

}  // namespace

StreamStats Segmenter::run_stream(const FrameSource& source, const FrameSink& sink, const StreamOptions& options) {
    Impl& impl = *impl_;
    if (options.batch < 1) throw Error(kExitBadInput, "the batch must be >= 1");
    const int64_t batch = std::min<int64_t>(options.batch, impl.max_batch());
    for (LaneState& lane : impl.lanes) {
        lane.frames.resize(static_cast<std::size_t>(batch));
        lane.started.resize(static_cast<std::size_t>(batch));
        lane.classmaps.resize(static_cast<std::size_t>(batch));
    }

    // The source side: fills a lane with up to `batch` consecutive frames of one size. A frame of another size
    // waits in `carry` for the next lane. Returns false when the source has no more frames.
    cv::Mat carry;
    Clock::time_point carry_started;
    bool has_carry = false, source_done = false;
    int64_t next_index = 0;
    auto fill_lane = [&](int l) -> bool {
        LaneState& lane = impl.lanes[l];
        int64_t n = 0;
        lane.first_index = next_index;
        if (has_carry) {
            cv::swap(carry, lane.frames[0]);
            lane.started[0] = carry_started;
            has_carry = false;
            n = 1;
        }
        while (n < batch && !source_done) {
            const auto started = Clock::now();
            cv::Mat& frame = lane.frames[static_cast<std::size_t>(n)];
            if (!source(frame)) {
                source_done = true;
                break;
            }
            detail::check_frame(frame, impl.options.max_pixels);
            if (n > 0 && frame.size() != lane.frames[0].size()) {
                cv::swap(carry, frame);
                carry_started = started;
                has_carry = true;
                break;
            }
            lane.started[static_cast<std::size_t>(n)] = started;
            ++n;
        }
        if (n == 0) return false;
        next_index += n;
        impl.fill(l, lane.frames.data(), n);
        return true;
    };

    std::vector<double> model_ms, total_ms;
    model_ms.reserve(4096);
    total_ms.reserve(4096);
    const auto start = Clock::now();
    // The sink side: waits for a running lane and hands its frames' class maps to the sink.
    auto complete = [&](int l) {
        LaneState& lane = impl.lanes[l];
        double lane_model_ms = 0.0;
        const detail::HostView out = impl.backend->wait(l, &lane_model_ms);
        impl.finish(l, out, lane.frames.data(), lane.count, lane.classmaps.data());
        const auto done = Clock::now();
        for (int64_t i = 0; i < lane.count; ++i) {
            const auto k = static_cast<std::size_t>(i);
            const FrameTiming timing{lane_model_ms, ms_between(lane.started[k], done)};
            model_ms.push_back(timing.model_ms);
            total_ms.push_back(timing.total_ms);
            sink(StreamFrame{lane.first_index + i, lane.frames[k], lane.classmaps[k], timing});
        }
    };

    const int in_flight_limit = std::max(1, impl.backend->max_in_flight());
    std::deque<int> running;
    if (!options.pipelined) {
        while (fill_lane(0)) {
            impl.backend->submit(0);
            complete(0);
        }
    } else {
        LaneQueues queues;
        // Synchronous runtime: a lane the caller ran goes back to the free queue with its output still to finish.
        // The queue's lock orders these flags between the threads; the free queue keeps the lanes in run order.
        const bool worker_finishes = impl.backend->synchronous();
        bool ran[detail::Backend::kLanes] = {};
        std::exception_ptr source_error;
        std::thread worker([&] {
            try {
                for (;;) {
                    const int l = queues.take_free();
                    if (l == kEnd) break;
                    if (ran[l]) {
                        complete(l);
                        ran[l] = false;
                    }
                    if (!fill_lane(l)) break;
                    queues.give_filled(l);
                }
            } catch (...) {
                source_error = std::current_exception();
            }
            queues.give_filled(kEnd);
        });
        try {
            for (;;) {
                const int l = queues.take_filled();
                if (l == kEnd) break;
                impl.backend->submit(l);
                if (worker_finishes) {
                    ran[l] = true;
                    queues.give_free(l);
                    continue;
                }
                running.push_back(l);
                while (static_cast<int>(running.size()) >= in_flight_limit) {
                    const int done = running.front();
                    running.pop_front();
                    complete(done);
                    queues.give_free(done);
                }
            }
            while (!running.empty()) {
                const int done = running.front();
                running.pop_front();
                complete(done);
                queues.give_free(done);
            }
        } catch (...) {
            queues.stop();
            // Lanes still running on the GPU must finish before their buffers can be reused or freed.
            for (const int l : running) {
                try {
                    double ignored = 0.0;
                    impl.backend->wait(l, &ignored);
                } catch (...) {
                }
            }
            // The worker may wait for a free lane or be inside the source; either way it sees the stop or the end.
            worker.join();
            throw;
        }
        worker.join();
        if (source_error) std::rethrow_exception(source_error);
        // Lanes the caller ran after the worker's last turn, finished here in run order.
        for (int l; (l = queues.take_free_now()) != kEnd;) {
            if (ran[l]) complete(l);
            ran[l] = false;
        }
    }

    StreamStats stats;
    stats.frames = static_cast<int64_t>(total_ms.size());
    stats.seconds = ms_between(start, Clock::now()) / 1000.0;
    stats.fps = stats.seconds > 0 ? static_cast<double>(stats.frames) / stats.seconds : 0.0;
    stats.model_ms = percentiles(model_ms);
    stats.total_ms = percentiles(total_ms);
    return stats;
}

}  // namespace segdeploy
