"""Triton kernels and their launchers. Importing a module here imports Triton; fastgan does so only on first use,
so ``TRITON_INTERPRET=1`` (CPU interpreter) must be set before a Triton implementation first runs."""
