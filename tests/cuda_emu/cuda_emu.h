// A CPU emulation of the CUDA thread model, to run fastgan's kernel headers (csrc/*_kernels.cuh) and nvcc launchers
// (csrc/*_cuda.cu) on a machine without a GPU: tests/test_cuda_emulated.py compiles them with g++ and these headers
// in place of CUDA's (launches rewritten to emu::launch). Each CUDA thread is an OS thread and the blocks of a grid
// run one after another, so __shared__ is a function's static storage, __syncthreads a barrier of the block and a
// warp shuffle an exchange through the block's slots between two barriers of the warp. It checks what the kernels
// compute (indexing, reduction order, barriers, edge blocks), not how fast.
#pragma once

#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

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

struct Block {
    std::barrier<> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<uint64_t> slots;  // one per thread: the values a shuffle exchanges

    explicit Block(int threads) : all(threads), slots(threads) {
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
    auto next_block = [&]() noexcept { state = std::make_unique<Block>(threads); };
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
