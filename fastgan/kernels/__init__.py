"""Kernels behind fastgan's ops: Triton kernels in ``fastgan.kernels.triton`` (imported only on first use)."""
