// Segmenter::check_golden: golden/input.npy through the backend, compared with golden/output.npy (ONNX Runtime's
// output of model.onnx) by the rule for the backend's precision.
//
// ONNX Runtime and FP32 plans: the bundle format's rule (max|a-b| <= 1e-4 * max|b| + 1e-6; a class map may differ in
// 0.1% of its pixels). FP16 and INT8 plans cannot meet it: their rules are segdeploy's verification criteria for
// those precisions (segdeploy/criteria.py, thresholds_for): FP16 max relative error <= 1e-2 and argmax agreement
// >= 99%; INT8 p99 relative error <= 0.25 and agreement >= 80%. A class-map output is judged by agreement alone.
#include <cmath>
#include <sstream>

#include "segmenter_impl.hpp"

namespace segdeploy {

namespace {

struct Rule {
    std::string name;
    bool fp32 = true;
    double max_rel = 0.0, p99_rel = 0.0, min_agreement = 0.999;
};

Rule rule_for(const std::string& precision) {
    if (precision == "fp16") return {"FP16", false, 1e-2, 0.0, 0.99};
    if (precision == "int8" || precision == "int8-fp16") return {"INT8", false, 0.0, 0.25, 0.8};
    return {"FP32", true, 0.0, 0.0, 0.999};
}

// Class per pixel of a scores tensor (NCHW) or the values of a class map.
std::vector<int64_t> classes_of(const Tensor& t, const FramePipeline& p) {
    std::vector<int64_t> out;
    if (p.output == "classmap") {
        out.resize(t.count());
        for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int64_t>(t.at(i));
        return out;
    }
    if (t.shape.size() != 4) return out;
    const auto n = static_cast<std::size_t>(t.shape[0]), c = static_cast<std::size_t>(t.shape[1]);
    const std::size_t pixels = static_cast<std::size_t>(t.shape[2] * t.shape[3]);
    out.resize(n * pixels);
    for (std::size_t b = 0; b < n; ++b)
        for (std::size_t i = 0; i < pixels; ++i) {
            const std::size_t base = b * c * pixels + i;
            if (c == 1) {
                out[b * pixels + i] = t.at(base) > p.threshold ? 1 : 0;
                continue;
            }
            std::size_t best = 0;
            double best_score = t.at(base);
            for (std::size_t k = 1; k < c; ++k)
                if (t.at(base + k * pixels) > best_score) best_score = t.at(base + k * pixels), best = k;
            out[b * pixels + i] = static_cast<int64_t>(best);
        }
    return out;
}

}  // namespace

GoldenResult Segmenter::check_golden() {
    const Manifest& m = impl_->manifest;
    const Tensor input = read_npy(m.resolve(m.golden_input));
    const Tensor golden = read_npy(m.resolve(m.golden_output));
    const Tensor got = run(input);
    const Rule rule = rule_for(impl_->backend->precision());
    GoldenResult result;
    std::ostringstream text;
    if (got.shape != golden.shape) {
        text << "output shape " << format_shape(got.shape) << " differs from golden " << format_shape(golden.shape);
        result.summary = text.str();
        return result;
    }
    const std::size_t n = got.count();
    const std::vector<int64_t> a = classes_of(got, m.pipeline), b = classes_of(golden, m.pipeline);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
    const double agreement = a.empty() ? 1.0 : 1.0 - static_cast<double>(differ) / static_cast<double>(a.size());

    if (m.pipeline.output == "classmap") {
        const double limit = 1.0 - rule.min_agreement;
        result.passed = static_cast<double>(differ) <= limit * static_cast<double>(n) * (1 + 1e-12);
        text << differ << " of " << n << " class-map pixels differ (" << 100.0 * differ / std::max<std::size_t>(n, 1)
             << "%, limit " << 100.0 * limit << "%, " << rule.name << ")";
        result.summary = text.str();
        return result;
    }
    double max_diff = 0.0, max_ref = 0.0;
    bool finite = true;
    std::vector<double> diffs(n);
    for (std::size_t i = 0; i < n; ++i) {
        const double x = got.at(i), y = golden.at(i);
        finite = finite && std::isfinite(x) && std::isfinite(y);
        diffs[i] = std::abs(x - y);
        max_diff = std::max(max_diff, diffs[i]);
        max_ref = std::max(max_ref, std::abs(y));
    }
    if (rule.fp32) {
        const double limit = 1e-4 * max_ref + 1e-6;
        result.passed = finite && max_diff <= limit;
        text << "max|out - golden| = " << max_diff << ", limit " << limit
             << " (1e-4 * max|golden| + 1e-6, max|golden| = " << max_ref << ")";
    } else {
        const double scale = max_ref > 0 ? max_ref : 1.0;
        const double max_rel = max_diff / scale;
        const double p99_rel = percentiles(diffs).p99 / scale;
        const bool error_ok = rule.max_rel > 0 ? max_rel <= rule.max_rel : p99_rel <= rule.p99_rel;
        result.passed = finite && error_ok && agreement >= rule.min_agreement;
        text << rule.name << " plan: ";
        if (rule.max_rel > 0) text << "max relative error " << max_rel << " (limit " << rule.max_rel << ")";
        else text << "p99 relative error " << p99_rel << " (limit " << rule.p99_rel << ")";
        text << ", argmax agreement " << agreement << " (limit " << rule.min_agreement << ")";
    }
    text << (finite ? "" : ", non-finite values");
    result.summary = text.str();
    return result;
}

}  // namespace segdeploy
