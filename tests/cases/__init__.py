"""One module per op; each defines ``CASES: list[tests.registry.OpCase]``."""
