"""fastmix benchmark suite (pytest-benchmark). Run it all with `python -m benchmarks [--quick] [-k EXPR]`."""
