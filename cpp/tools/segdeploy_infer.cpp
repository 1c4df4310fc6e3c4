// segdeploy_infer: run a segdeploy bundle on an image, or check its golden pair.
// Errors are one line on stderr ("error: ...") with the exit codes of segdeploy/error.hpp.
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <fcntl.h>
#include <unistd.h>

#include "segdeploy/segmenter.hpp"

namespace fs = std::filesystem;
using segdeploy::Error;

namespace {

const char kUsage[] =
    "usage: segdeploy_infer BUNDLE_DIR IMAGE -o MASK.png [--raw CLASSES.png] [options]\n"
    "       segdeploy_infer BUNDLE_DIR --check-golden [options]\n"
    "\n"
    "Runs a segdeploy bundle on an image at the image's own size when the model accepts it (else at the\n"
    "nearest size it accepts, the class map resized back), and writes the class map as a color PNG in the\n"
    "bundle's palette.\n"
    "\n"
    "  -o, --output MASK.png   color PNG of the class map (the bundle's palette)\n"
    "  --raw CLASSES.png       grey PNG of the class indices (8-bit, 16-bit above 255 classes)\n"
    "  --check-golden          run golden/input.npy and compare with golden/output.npy\n"
    "  --backend ort|trt       ONNX Runtime (default) or the bundle's TensorRT plan\n"
    "  --threads N             ONNX Runtime intra-op threads (default: ONNX Runtime's choice)\n"
    "  --dump-input FILE.npy   also save the tensor fed to the model\n"
    "  --verbose               let ONNX Runtime / TensorRT print their warnings\n"
    "  --version               this program's version and its runtimes\n"
    "\n"
    "Exit codes: 0 ok, 1 error, 2 bad input, 4 golden mismatch, 5 TensorRT or a CUDA GPU unavailable.\n";

struct Args {
    std::string bundle, image, output, raw, dump_input, backend = "ort";
    bool check_golden = false, verbose = false;
    int threads = 0;
};

Args parse(int argc, char** argv) {
    Args args;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw Error(segdeploy::kExitBadInput, a + " needs a value");
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
        } else if (a == "--threads") {
            const std::string v = value();
            try {
                std::size_t used = 0;
                args.threads = std::stoi(v, &used);
                if (used != v.size() || args.threads < 0) throw std::invalid_argument(v);
            } catch (const std::exception&) {
                throw Error(segdeploy::kExitBadInput, "--threads needs a count >= 0, got '" + v + "'");
            }
        } else if (a == "--check-golden") {
            args.check_golden = true;
        } else if (a == "--verbose") {
            args.verbose = true;
        } else if (a.size() > 1 && a[0] == '-') {
            throw Error(segdeploy::kExitBadInput, "unknown option " + a + " (see --help)");
        } else {
            positional.push_back(a);
        }
    }
    segdeploy::backend_from_name(args.backend);  // validate early
    const std::size_t want = args.check_golden ? 1 : 2;
    if (positional.size() != want)
        throw Error(segdeploy::kExitBadInput, args.check_golden ? "--check-golden takes BUNDLE_DIR only (see --help)"
                                                                : "expected BUNDLE_DIR and IMAGE (see --help)");
    args.bundle = positional[0];
    if (!args.check_golden) {
        args.image = positional[1];
        if (args.output.empty() && args.raw.empty())
            throw Error(segdeploy::kExitBadInput, "nothing to write: give -o MASK.png and/or --raw CLASSES.png");
    }
    return args;
}

// libpng prints its own warnings on stderr when OpenCV decodes a damaged PNG; while this lives, stderr goes to
// /dev/null so that the one error line stays the only one.
class QuietStderr {
public:
    explicit QuietStderr(bool active) {
        if (!active) return;
        std::cerr.flush();
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

// A writable target, checked before minutes of inference rather than after.
void check_target(const std::string& path, const std::string& extension) {
    const fs::path p(path);
    if (p.extension() != extension)
        throw Error(segdeploy::kExitBadInput, path + ": the file name must end in " + extension);
    const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        throw Error(segdeploy::kExitBadInput, path + ": directory " + dir.string() + " does not exist");
}

// Writes through a temporary file beside the target, so the target is complete or untouched.
template <typename WriteFn>
void write_atomically(const std::string& path, const std::string& extension, WriteFn write) {
    const fs::path target(path);
    const fs::path tmp = target.parent_path() /
                         ("." + target.filename().string() + "." + std::to_string(::getpid()) + ".tmp" + extension);
    try {
        write(tmp);
        fs::rename(tmp, target);
    } catch (...) {
        std::error_code ec;
        fs::remove(tmp, ec);
        throw;
    }
}

void write_png(const std::string& path, const cv::Mat& image) {
    write_atomically(path, ".png", [&](const fs::path& tmp) {
        if (!cv::imwrite(tmp.string(), image)) throw Error(segdeploy::kExitError, "cannot write " + path);
    });
}

int run(const Args& args) {
    // OpenCV logs warnings (unreadable files) on stderr, where only our one error line belongs.
    if (!args.verbose) cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
    segdeploy::Options options;
    options.threads = args.threads;
    options.verbose = args.verbose;
    cv::Mat frame;  // read before the model loads: a wrong path fails fast
    if (!args.check_golden) {
        if (!args.output.empty()) check_target(args.output, ".png");
        if (!args.raw.empty()) check_target(args.raw, ".png");
        if (!args.dump_input.empty()) check_target(args.dump_input, ".npy");
        std::error_code ec;
        if (!fs::is_regular_file(args.image, ec))
            throw Error(segdeploy::kExitBadInput, args.image + ": no such image file");
        {
            QuietStderr quiet(!args.verbose);
            frame = cv::imread(args.image, cv::IMREAD_COLOR);
        }
        if (frame.empty()) throw Error(segdeploy::kExitBadInput, args.image + ": not an image OpenCV can read");
    }
    segdeploy::Segmenter segmenter(args.bundle, segdeploy::backend_from_name(args.backend), options);

    if (args.check_golden) {
        const auto result = segmenter.check_golden();
        if (!result.passed)
            throw Error(segdeploy::kExitMismatch, "golden check failed on " + segmenter.backend_description() + ": " +
                                                      result.summary);
        std::cout << "golden check passed on " << segmenter.backend_description() << ": " << result.summary << '\n';
        return 0;
    }

    const cv::Size size = segmenter.run_size(frame.size());
    const segdeploy::Tensor input = segmenter.preprocess(frame, size);
    if (!args.dump_input.empty())
        write_atomically(args.dump_input, ".npy", [&](const fs::path& tmp) { segdeploy::write_npy(tmp, input); });
    cv::Mat classes = segmenter.classmap(segmenter.run(input));
    if (classes.size() != frame.size()) cv::resize(classes, classes, frame.size(), 0, 0, cv::INTER_NEAREST);

    if (!args.output.empty()) write_png(args.output, segmenter.colorize(classes));
    if (!args.raw.empty()) {
        double lowest = 0, highest = 0;
        cv::minMaxLoc(classes, &lowest, &highest);
        if (lowest < 0) throw Error(segdeploy::kExitError, "the model produced negative class indices");
        cv::Mat grey;
        classes.convertTo(grey, highest > 255 ? CV_16U : CV_8U);
        write_png(args.raw, grey);
    }
    std::cout << "wrote " << (args.output.empty() ? args.raw : args.output) << ": " << frame.cols << "x" << frame.rows
              << " image, model ran at " << size.width << "x" << size.height << " on "
              << segmenter.backend_description() << '\n';
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
