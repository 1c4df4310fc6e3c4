// segdeploy_infer: run a segdeploy bundle on images, directories, videos, cameras and streams, or check its
// golden pair. Errors are one line on stderr ("error: ...") with the exit codes of segdeploy/error.hpp.
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/core/utils/logger.hpp>

#include "media.hpp"
#include "segdeploy/segmenter.hpp"

namespace fs = std::filesystem;
using segdeploy::Error;
using segdeploy::kExitBadInput;

namespace {

const char kUsage[] =
    "usage: segdeploy_infer BUNDLE_DIR INPUT [-o OUTPUT] [--raw RAW] [options]\n"
    "       segdeploy_infer BUNDLE_DIR --check-golden [options]\n"
    "\n"
    "Runs a segdeploy bundle on INPUT: an image, a directory of images, a video file, a camera index (0) or a\n"
    "stream URL / GStreamer pipeline. Frames become inputs and outputs class maps as the bundle's manifest says;\n"
    "the masks come back at each frame's size, in the bundle's palette. Ends with a summary: frames, FPS, and\n"
    "p50/p90/p99 of the model's time and of the end-to-end time (reading the frame to its class map).\n"
    "\n"
    "  -o, --output OUTPUT     MASK.png (one image in), DIR/ (NAME.png per frame) or a video (.mp4 .avi .mkv .mov;\n"
    "                          .mkv is lossless FFV1); without -o and --raw nothing is written (a timing run)\n"
    "  --raw RAW               grey PNG(s) of the class indices (8-bit, 16-bit above 255 classes): RAW.png or DIR/\n"
    "  --overlay ALPHA         blend the palette over the frame, ALPHA in [0, 1] the palette's weight\n"
    "  --fourcc CODE           video codec of a video OUTPUT (default by extension)\n"
    "  --check-golden          run golden/input.npy and compare with golden/output.npy\n"
    "  --backend ort|trt       ONNX Runtime (default) or the bundle's TensorRT plan\n"
    "  --batch N               frames per run through the engine's batch dimension (default 1)\n"
    "  --no-pipeline           read and preprocess each frame after the previous one ran (default: overlapped)\n"
    "  --max-frames N          stop after N frames (cameras and streams)\n"
    "  --max-pixels N          refuse frames above N pixels (default 33177600, 7680x4320)\n"
    "  --threads N             ONNX Runtime intra-op threads (default: ONNX Runtime's choice)\n"
    "  --dump-input FILE.npy   also save the tensor fed to the model (one image in)\n"
    "  --json                  print the summary as JSON\n"
    "  --verbose               let OpenCV, ONNX Runtime and TensorRT print their messages\n"
    "  --version               this program's version and its runtimes\n"
    "\n"
    "Exit codes: 0 ok, 1 error, 2 bad input, 4 golden mismatch, 5 TensorRT or a CUDA GPU unavailable.\n";

struct Args {
    std::string bundle, input, output, raw, dump_input, fourcc, backend = "ort";
    bool check_golden = false, verbose = false, json = false, pipelined = true;
    int threads = 0, batch = 1;
    int64_t max_frames = -1, max_pixels = segdeploy::kDefaultMaxPixels;
    double overlay = 1.0;
    bool has_overlay = false;
};

int64_t parse_int(const std::string& option, const std::string& v, int64_t lo) {
    try {
        std::size_t used = 0;
        const long long n = std::stoll(v, &used);
        if (used != v.size() || n < lo) throw std::invalid_argument(v);
        return n;
    } catch (const std::exception&) {
        throw Error(kExitBadInput, option + " needs an integer >= " + std::to_string(lo) + ", got '" + v + "'");
    }
}

Args parse(int argc, char** argv) {
    Args args;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw Error(kExitBadInput, a + " needs a value");
            return argv[++i];
        };
        if (a == "-h" || a == "--help") {
            std::cout << kUsage;
            std::exit(0);
        } else if (a == "--version") {
            std::cout << "segdeploy_infer " << SEGDEPLOY_VERSION << " (" << segdeploy::runtime_versions() << ")\n";
            std::exit(0);
        } else if (a == "-o" || a == "--output") {
            args.output = value();
        } else if (a == "--raw") {
            args.raw = value();
        } else if (a == "--backend") {
            args.backend = value();
        } else if (a == "--dump-input") {
            args.dump_input = value();
        } else if (a == "--fourcc") {
            args.fourcc = value();
        } else if (a == "--threads") {
            args.threads = static_cast<int>(parse_int(a, value(), 0));
        } else if (a == "--batch") {
            args.batch = static_cast<int>(parse_int(a, value(), 1));
        } else if (a == "--max-frames") {
            args.max_frames = parse_int(a, value(), 1);
        } else if (a == "--max-pixels") {
            args.max_pixels = parse_int(a, value(), 1);
        } else if (a == "--overlay") {
            const std::string v = value();
            try {
                std::size_t used = 0;
                args.overlay = std::stod(v, &used);
                if (used != v.size() || !(args.overlay >= 0.0 && args.overlay <= 1.0)) throw std::invalid_argument(v);
            } catch (const std::exception&) {
                throw Error(kExitBadInput, "--overlay needs a number in [0, 1], got '" + v + "'");
            }
            args.has_overlay = true;
        } else if (a == "--check-golden") {
            args.check_golden = true;
        } else if (a == "--no-pipeline") {
            args.pipelined = false;
        } else if (a == "--json") {
            args.json = true;
        } else if (a == "--verbose") {
            args.verbose = true;
        } else if (a.size() > 1 && a[0] == '-') {
            throw Error(kExitBadInput, "unknown option " + a + " (see --help)");
        } else {
            positional.push_back(a);
        }
    }
    segdeploy::backend_from_name(args.backend);  // validate early
    const std::size_t want = args.check_golden ? 1 : 2;
    if (positional.size() != want)
        throw Error(kExitBadInput, args.check_golden ? "--check-golden takes BUNDLE_DIR only (see --help)"
                                                     : "expected BUNDLE_DIR and INPUT (see --help)");
    args.bundle = positional[0];
    if (!args.check_golden) args.input = positional[1];
    return args;
}

std::string summary_text(const segdeploy::StreamStats& s, const std::string& backend) {
    std::ostringstream out;
    out << std::fixed << std::setprecision(2);
    out << s.frames << " frames in " << s.seconds << " s (" << s.fps << " FPS) on " << backend << "; model ms p50 "
        << s.model_ms.p50 << " p90 " << s.model_ms.p90 << " p99 " << s.model_ms.p99 << "; end-to-end ms p50 "
        << s.total_ms.p50 << " p90 " << s.total_ms.p90 << " p99 " << s.total_ms.p99;
    return out.str();
}

std::string summary_json(const segdeploy::StreamStats& s, const std::string& backend, const Args& args) {
    auto pct = [](const segdeploy::Percentiles& p) {
        std::ostringstream o;
        o << std::setprecision(6) << "{\"p50\": " << p.p50 << ", \"p90\": " << p.p90 << ", \"p99\": " << p.p99 << "}";
        return o.str();
    };
    std::string escaped;
    for (char c : backend) escaped += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
    std::ostringstream out;
    out << std::setprecision(6) << "{\"frames\": " << s.frames << ", \"seconds\": " << s.seconds
        << ", \"fps\": " << s.fps << ", \"backend\": \"" << escaped << "\", \"batch\": " << args.batch
        << ", \"pipelined\": " << (args.pipelined ? "true" : "false") << ", \"model_ms\": " << pct(s.model_ms)
        << ", \"total_ms\": " << pct(s.total_ms) << "}";
    return out.str();
}

int check_golden(const Args& args, const segdeploy::Options& options) {
    segdeploy::Segmenter segmenter(args.bundle, segdeploy::backend_from_name(args.backend), options);
    const auto result = segmenter.check_golden();
    if (!result.passed)
        throw Error(segdeploy::kExitMismatch,
                    "golden check failed on " + segmenter.backend_description() + ": " + result.summary);
    std::cout << "golden check passed on " << segmenter.backend_description() << ": " << result.summary << '\n';
    return 0;
}

int run(const Args& args) {
    // OpenCV logs warnings (unreadable files) on stderr, where only our one error line belongs.
    if (!args.verbose) cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
    // OpenCV's own bound on decoded images, read once at its first decode: formats whose headers are not read here
    // are refused by it before their pixels are allocated.
    ::setenv("OPENCV_IO_MAX_IMAGE_PIXELS", std::to_string(args.max_pixels).c_str(), 1);
    segdeploy::Options options;
    options.threads = args.threads;
    options.verbose = args.verbose;
    options.max_pixels = args.max_pixels;
    if (args.check_golden) return check_golden(args, options);

    // Inputs and outputs are checked before the model loads: a wrong path or an oversized frame fails fast.
    media::FrameReader reader(args.input, args.max_pixels, args.verbose);
    std::unique_ptr<media::MaskWriter> color, raw;
    if (!args.output.empty())
        color = std::make_unique<media::MaskWriter>(args.output, reader.single_image(), true, args.fourcc);
    if (!args.raw.empty()) raw = std::make_unique<media::MaskWriter>(args.raw, reader.single_image(), false, "");
    if (!args.dump_input.empty() && !reader.single_image())
        throw Error(kExitBadInput, "--dump-input takes one image as INPUT");
    if (!args.dump_input.empty() && fs::path(args.dump_input).extension() != ".npy")
        throw Error(kExitBadInput, args.dump_input + ": the file name must end in .npy");

    segdeploy::Segmenter segmenter(args.bundle, segdeploy::backend_from_name(args.backend), options);
    const std::string backend = segmenter.backend_description();

    int64_t read = 0;
    cv::Size first_frame, first_run;
    segdeploy::FrameSource source = [&](cv::Mat& frame) {
        if (args.max_frames >= 0 && read >= args.max_frames) return false;
        if (!reader.next(frame)) return false;
        if (read++ == 0) {
            first_frame = frame.size();
            first_run = segmenter.run_size(frame.size());
            if (!args.dump_input.empty()) {
                const fs::path target(args.dump_input), tmp = target.parent_path() / ("." + target.filename().string());
                segdeploy::write_npy(tmp, segmenter.preprocess(frame, first_run));
                fs::rename(tmp, target);
            }
        }
        return true;
    };
    cv::Mat painted, grey;
    segdeploy::FrameSink sink = [&](const segdeploy::StreamFrame& r) {
        const std::string name = reader.name(r.index);
        if (color) {
            segmenter.colorize(r.classmap, painted, args.has_overlay ? &r.frame : nullptr, args.overlay);
            color->write(name, painted, reader.fps());
        }
        if (raw) {
            double lowest = 0, highest = 0;
            cv::minMaxLoc(r.classmap, &lowest, &highest);
            if (lowest < 0) throw Error(segdeploy::kExitError, "the model produced negative class indices");
            r.classmap.convertTo(grey, highest > 255 ? CV_16U : CV_8U);
            raw->write(name, grey, reader.fps());
        }
    };
    segdeploy::StreamOptions stream;
    stream.batch = args.batch;
    stream.pipelined = args.pipelined;
    const segdeploy::StreamStats stats = segmenter.run_stream(source, sink, stream);
    if (stats.frames == 0) throw Error(kExitBadInput, args.input + ": no frames");
    if (color) color->finish();
    if (raw) raw->finish();

    if (args.json) {
        std::cout << summary_json(stats, backend, args) << '\n';
        return 0;
    }
    if (reader.single_image() && (color || raw))
        std::cout << "wrote " << (color ? color->target() : raw->target()) << ": " << first_frame.width << "x"
                  << first_frame.height << " image, model ran at " << first_run.width << "x" << first_run.height
                  << " on " << backend << '\n';
    std::cout << summary_text(stats, backend) << '\n';
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const Error& exc) {
        std::cerr << "error: " << segdeploy::first_line(exc.what()) << '\n';
        return exc.exit_code();
    } catch (const cv::Exception& exc) {
        std::cerr << "error: OpenCV: " << segdeploy::first_line(exc.what()) << '\n';
        return segdeploy::kExitError;
    } catch (const fs::filesystem_error& exc) {
        std::cerr << "error: " << segdeploy::first_line(exc.what()) << '\n';
        return segdeploy::kExitError;
    } catch (const std::exception& exc) {
        std::cerr << "error: internal error: " << segdeploy::first_line(exc.what()) << '\n';
        return segdeploy::kExitError;
    } catch (...) {
        std::cerr << "error: internal error\n";
        return segdeploy::kExitError;
    }
}
