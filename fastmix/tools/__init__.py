"""Commands: `verify` (a config end to end), `equivalence` (fastmix vs `WeightedRandomSampler`) and
`compute_norm_stats`. Each module defines `add_arguments(parser)` and `run(args) -> int` for `fastmix.cli`."""
