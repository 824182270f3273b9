"""`fastmix` command line: one subcommand per job, each implemented in its own module.

Each module listed in `_COMMANDS` defines `add_arguments(parser: argparse.ArgumentParser) -> None`
and `run(args: argparse.Namespace) -> int` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("fastmix.demo.main", "generate the embedded default mixture and train a small policy on it"),
    "verify": ("fastmix.tools.verify", "check a registered config's data pipeline and its mixture (CONFIG [NUM_SAMPLES])"),
    "equivalence": ("fastmix.tools.equivalence", "statistical equivalence of fastmix's sampler to WeightedRandomSampler"),
    "compute-norm-stats": ("fastmix.tools.compute_norm_stats", "compute norm_stats.json over a config's whole mixture"),
    "cache": ("fastmix.tools.cache", "list or clear the low-dim store's cache entries (list | clear [--dataset NAME])"),
}


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit status. Bad input (any `FastmixError` a command lets through) is one
    `fastmix COMMAND: error: ...` line on stderr and exit status 2, never a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="fastmix", description="fastmix: weighted multi-dataset loading for LeRobot")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = argv[0] if argv else None
    for name, (module_name, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name == chosen:  # import only the chosen command's module (keeps `fastmix --help` fast)
            importlib.import_module(module_name).add_arguments(p)
    args = parser.parse_args(argv)
    import fastmix.demo.configs  # noqa: F401  (the demo configs join the registry the commands read)
    from fastmix.errors import FastmixError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except FastmixError as e:
        print(f"fastmix {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
