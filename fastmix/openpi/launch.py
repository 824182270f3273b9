"""Run an openpi script unchanged on fastmix: register configs into openpi's registry, `install()`, then run the
script as `__main__`.

    python -m fastmix.openpi.launch --configs my_configs.py scripts/train.py pi05_libero_cotrain --exp-name=run1

`--configs` (repeatable) names a Python file or an importable module; it is run first. It may register its
configs itself (`fastmix.openpi.register_openpi_configs`) or define `CONFIGS`, a list of openpi `TrainConfig`s
that the launcher registers. Then openpi's `create_data_loader` / `create_torch_dataset` are routed through
fastmix (`fastmix.openpi.install()`) and SCRIPT runs with `sys.argv = [SCRIPT, *ARGS]`, so its own
`_config.cli()` finds the configs by name. Errors (no openpi, a configs file that defines nothing usable) name
the file or module.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import runpy
import sys
from collections.abc import Sequence
from typing import Any

from fastmix.errors import ConfigError


def load_configs(spec: str) -> list[str]:
    """Run the configs file or module `spec`; register its `CONFIGS` (if it defines them). Returns the names it
    registered through `CONFIGS` (empty when it registers its configs itself)."""
    from fastmix.openpi.for_openpi import register_openpi_configs

    path = pathlib.Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--configs {spec}: no such file")
        namespace: dict[str, Any] = runpy.run_path(str(path), run_name=f"fastmix_openpi_configs_{path.stem}")
    else:
        try:
            namespace = vars(importlib.import_module(spec))
        except ImportError as e:
            raise ConfigError(f"--configs {spec}: not a file, and importing it as a module failed ({e})") from e
    configs = namespace.get("CONFIGS")
    if configs is None:
        return []
    if isinstance(configs, str | bytes) or not isinstance(configs, Sequence):
        raise ConfigError(f"--configs {spec}: CONFIGS must be a list of openpi TrainConfigs, got "
                          f"{type(configs).__name__}")
    try:
        return register_openpi_configs(*configs)
    except ConfigError as e:
        raise ConfigError(f"--configs {spec}: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastmix.openpi.launch",
        description="Run an openpi script (e.g. scripts/train.py) unchanged, its data loading routed through "
                    "fastmix, with configs registered into openpi's registry.",
    )
    parser.add_argument("--configs", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="a Python file or module registering configs or defining CONFIGS (repeatable)")
    parser.add_argument("script", help="the openpi script to run, e.g. scripts/train.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    ns = parser.parse_args(argv)
    script = pathlib.Path(ns.script)
    if not script.is_file():
        parser.error(f"no such script: {script}")
    from fastmix.openpi.adapter import install

    for spec in ns.configs:
        load_configs(spec)
    if not install():
        raise ConfigError("openpi is not importable in this environment: nothing to launch the script on")
    sys.argv = [str(script), *ns.args]
    sys.path.insert(0, str(script.resolve().parent))  # as `python SCRIPT` would
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
