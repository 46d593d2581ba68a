// A CPU emulation of the CUDA thread model, to run fastgan's kernel headers (csrc/*_kernels.cuh) and nvcc launchers
// (csrc/*_cuda.cu) on a machine without a GPU: tests/test_cuda_emulated.py compiles them with g++ and these headers
// in place of CUDA's (launches rewritten to emu::launch). Each CUDA thread is an OS thread and the blocks of a grid
// run one after another, so __shared__ is a function's static storage, __syncthreads a barrier of the block and a
// warp shuffle an exchange through the block's slots between two barriers of the warp. It checks what the kernels
// compute (indexing, reduction order, barriers, edge blocks), not how fast.
#pragma once

#include <barrier>
#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

// csrc/common.h's load() reports every element a kernel reads (trace_load below).
#define FASTGAN_TRACE_LOAD(address, bytes) ::emu::trace_load(address, bytes)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3(unsigned x_ = 1) : x(x_) {}
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {

constexpr int kWarp = 32;

// Memory traffic, per kernel (named by the NVRTC plans' kernel tables; "" from nvcc's launchers): the warp-wide loads
// (the k-th element load of each of a warp's threads is one request), the 32-byte sectors they touch (a GPU's unit
// of memory access) and the bytes they ask for. A warp reading 32 adjacent floats touches 4 sectors; 32 floats a
// row apart, 32.
struct Traffic {
    int64_t requests = 0, sectors = 0, bytes = 0;
};
inline bool tracing = false;
inline std::map<std::string, Traffic> traffic;
inline std::string kernel_name;

struct Block {
    std::barrier<> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<uint64_t> slots;  // one per thread: the values a shuffle exchanges
    std::vector<std::vector<std::pair<uintptr_t, size_t>>> loads;  // per thread, with tracing: address, bytes

    // Adds this block's warp-wide loads to traffic[kernel_name].
    void count_traffic() const {
        Traffic& t = traffic[kernel_name];
        for (size_t w = 0; w * kWarp < loads.size(); ++w) {
            const size_t first = w * kWarp, last = std::min(loads.size(), first + kWarp);
            size_t requests = 0;
            for (size_t l = first; l < last; ++l) requests = std::max(requests, loads[l].size());
            for (size_t k = 0; k < requests; ++k) {
                std::vector<uintptr_t> sectors;
                for (size_t l = first; l < last; ++l) {
                    if (k >= loads[l].size()) continue;
                    const auto [address, bytes] = loads[l][k];
                    for (uintptr_t s = address / 32; s <= (address + bytes - 1) / 32; ++s) sectors.push_back(s);
                    t.bytes += static_cast<int64_t>(bytes);
                }
                std::sort(sectors.begin(), sectors.end());
                t.sectors += std::unique(sectors.begin(), sectors.end()) - sectors.begin();
                t.requests += 1;
            }
        }
    }

    explicit Block(int threads) : all(threads), slots(threads), loads(tracing ? threads : 0) {
        for (int w = 0; w * kWarp < threads; ++w) {
            const int n = threads - w * kWarp < kWarp ? threads - w * kWarp : kWarp;
            warps.push_back(std::make_unique<std::barrier<>>(n));
        }
    }
};

inline thread_local Block* current = nullptr;

// Runs the grid's blocks in order on block.x OS threads, fresh barriers for each block.
template <typename F>
void launch(const F& kernel, dim3 grid, dim3 block, size_t shared_bytes = 0, void* stream = nullptr) {
    (void)shared_bytes;
    (void)stream;
    gridDim = grid;
    blockDim = block;
    const int threads = static_cast<int>(block.x);
    auto state = std::make_unique<Block>(threads);
    auto next_block = [&]() noexcept {
        if (tracing) state->count_traffic();
        state = std::make_unique<Block>(threads);
    };
    std::barrier<decltype(next_block)> done(threads, next_block);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            threadIdx.x = static_cast<unsigned>(t);
            for (unsigned b = 0; b < grid.x; ++b) {
                blockIdx.x = b;
                current = state.get();
                kernel();
                // An exited thread no longer holds back the barriers of the others (as on a GPU since Volta).
                current->warps[t / kWarp]->arrive_and_drop();
                current->all.arrive_and_drop();
                done.arrive_and_wait();
            }
        });
    }
    for (auto& thread : pool) thread.join();
}

// kernel called with its arguments' bytes, each as the kernel takes it (an NVRTC launch plan's arguments).
template <typename... A>
void call(void (*kernel)(A...), void* const* args) {
    [&]<size_t... I>(std::index_sequence<I...>) {
        kernel(*static_cast<std::remove_cvref_t<A>*>(args[I])...);
    }(std::index_sequence_for<A...>{});
}

}  // namespace emu

namespace emu {

inline void trace_load(const void* address, size_t bytes) {
    if (tracing) current->loads[threadIdx.x].emplace_back(reinterpret_cast<uintptr_t>(address), bytes);
}

}  // namespace emu

inline void __syncthreads() { emu::current->all.arrive_and_wait(); }

template <typename T>
T __shfl_down_sync(unsigned mask, T v, int offset) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 64 bits");
    (void)mask;
    emu::Block& block = *emu::current;
    const int t = static_cast<int>(threadIdx.x), lane = t % emu::kWarp, warp = t / emu::kWarp;
    std::memcpy(&block.slots[t], &v, sizeof(T));
    block.warps[warp]->arrive_and_wait();
    T out = v;
    if (lane + offset < emu::kWarp && t + offset < static_cast<int>(block.slots.size())) {
        std::memcpy(&out, &block.slots[t + offset], sizeof(T));
    }
    block.warps[warp]->arrive_and_wait();
    return out;
}
