// Launch rules shared by both ways fastgan launches its CUDA kernels: the nvcc-compiled launchers (*_cuda.cu) and the
// NVRTC launch plans of the torch-facing glue (*.cpp, kernels compiled at run time by fastgan/_nvrtc.py). Plain C++:
// no CUDA or PyTorch headers, so the glue of a build without nvcc uses it too.
#pragma once

#include "common.h"
#include "losses.h"
#include "norm_act.h"

namespace fastgan {

// Grid-stride loops cover any numel with a bounded grid (> 2^31 elements included): at most 65536 blocks.
inline unsigned elementwise_blocks(int64_t numel) {
    const int64_t blocks = (numel + kThreads - 1) / kThreads;
    return static_cast<unsigned>(blocks > 65536 ? 65536 : (blocks < 1 ? 1 : blocks));
}

// One thread per item (norm_act's merges and running statistics): ceil(n / kThreads) blocks.
inline unsigned thread_per_item_blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// norm_act: the chunks a statistic group is reduced in, of kNormActChunk values (one block each), or with
// norm_act_rows of norm_act_row_chunk values (one block per chunk and tile of kNormActTile channels).
inline int64_t norm_act_chunks(const NormActParams& p) {
    const int64_t chunk = norm_act_rows(p) ? norm_act_row_chunk(p) : kNormActChunk;
    return p.group_size > 0 ? (p.group_size + chunk - 1) / chunk : 1;
}

// The blocks of the partial reductions (stats_partial_kernel, grad_partial_kernel).
inline unsigned norm_act_partial_blocks(const NormActParams& p) {
    const int64_t units = norm_act_rows(p) ? (p.groups / p.C) * ((p.C + kNormActTile - 1) / kNormActTile) : p.groups;
    return static_cast<unsigned>(units * norm_act_chunks(p));
}

// gan_loss: up to 64K elements one block of kMaxThreads is fastest (one launch); larger PatchGAN maps spread over up
// to kGanLossMaxBlocks blocks of ~4K elements each, then one more block (kGanLossMaxBlocks threads) adds the partial
// sums.
inline unsigned gan_loss_blocks(int64_t total, bool has_partials) {
    int64_t blocks = total <= 65536 ? 1 : (total + 4095) / 4096;
    if (blocks > kGanLossMaxBlocks) blocks = kGanLossMaxBlocks;
    if (blocks > 1 && !has_partials) blocks = 1;
    return static_cast<unsigned>(blocks);
}
inline int gan_loss_threads(unsigned blocks) { return blocks == 1 ? kMaxThreads : kThreads; }

// The C++ type a kernel template is instantiated with for each element type: the names NVRTC's name expressions use
// (fastgan/_nvrtc.py::KERNELS spells the same).
inline const char* cuda_type_name(DType dtype) {
    switch (dtype) {
        case DType::Float16: return "__half";
        case DType::BFloat16: return "__nv_bfloat16";
        case DType::Float64: return "double";
        default: return "float";
    }
}

// The math type's name (MathType<T>): double for float64, float otherwise.
inline const char* cuda_math_type_name(DType dtype) { return dtype == DType::Float64 ? "double" : "float"; }

}  // namespace fastgan
