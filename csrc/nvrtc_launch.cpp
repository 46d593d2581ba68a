// State of the NVRTC path (nvrtc_launch.h): the launcher fastgan/_nvrtc.py installs and whether it is requested.
#include "nvrtc_launch.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <mutex>
#include <utility>

namespace fastgan {
namespace {

std::mutex launcher_mutex;
NvrtcLauncher& launcher() {
    static NvrtcLauncher* instance = new NvrtcLauncher();  // never destroyed: it may hold a Python object at exit
    return *instance;
}
std::atomic<bool> requested{false};

}  // namespace

std::string kernel_name(const char* base, std::initializer_list<std::string> template_args) {
    std::string name = std::string("fastgan::") + base + "<";
    bool first = true;
    for (const std::string& arg : template_args) {
        if (!first) name += ", ";
        name += arg;
        first = false;
    }
    return name + ">";
}

void set_nvrtc_launcher(NvrtcLauncher l) {
    const std::lock_guard<std::mutex> lock(launcher_mutex);
    launcher() = std::move(l);
}

bool use_nvrtc() {
#ifdef FASTGAN_WITH_CUDA
    return requested.load();
#else
    return true;
#endif
}

void set_nvrtc_requested(bool value) { requested.store(value); }

void nvrtc_run(const char* op, const c10::Device& device, const std::vector<NvrtcLaunch>& plan) {
    if (plan.empty()) return;
    NvrtcLauncher l;
    {
        const std::lock_guard<std::mutex> lock(launcher_mutex);
        l = launcher();
    }
    TORCH_CHECK(static_cast<bool>(l), op, ": fastgan._C has no CUDA kernels compiled by nvcc and the NVRTC launcher "
                "is not installed; call the op through fastgan.ops (impl='native'), which installs it, or rebuild "
                "fastgan with nvcc (`pip install --no-build-isolation -e .`)");
    try {
        l(device.index(), plan);
    } catch (const std::exception& error) {
        TORCH_CHECK(false, op, ": NVRTC kernel launch failed: ", error.what());
    }
}

}  // namespace fastgan
