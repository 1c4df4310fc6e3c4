// A fake libnvinfer_plugin: initLibNvInferPlugins registers the fake plugin with the fake libnvinfer (a plan with
// "plugins": true deserializes only after it). FAKE_TRT_PLUGIN_FAIL=1 makes it log an error and return false.
#include <NvInferPlugin.h>

#include "fake_common.hpp"

extern "C" void fake_trt_register_plugins();

extern "C" bool initLibNvInferPlugins(void* logger, char const* libNamespace) {
    fake_trt::event("initLibNvInferPlugins namespace '%s'", libNamespace ? libNamespace : "");
    if (!fake_trt::env("FAKE_TRT_PLUGIN_FAIL").empty()) {
        static_cast<nvinfer1::ILogger*>(logger)->log(nvinfer1::ILogger::Severity::kERROR, "fake plugin failure");
        return false;
    }
    fake_trt_register_plugins();
    return true;
}
