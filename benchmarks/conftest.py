import sys
from pathlib import Path

# Benchmarks import the harness as `benchmarks.harness` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
