"""Commands: `verify` (a config end to end), `equivalence` (fastmix vs `WeightedRandomSampler`),
`compute_norm_stats` and `cache` (the low-dim store entries). Each defines `add_arguments(parser)` and
`run(args) -> int` for `fastmix.cli`; `user_configs` loads the user's config modules for them."""
