"""The user's own configs for the `fastmix` commands (`verify`, `compute-norm-stats`): `--configs MODULE_OR_FILE`
(repeatable) and the environment variable `FASTMIX_CONFIGS` (entries separated by `os.pathsep`, ":" on Linux,
as in PYTHONPATH) name modules to import before the config is looked up.

An entry is a `.py` file path (imported under a private module name; relative paths are taken from the current
directory) or a module path such as `my_pkg.my_configs` (imported as Python would, the current directory
included in the search path as with `python -m`). The rule for what a module contributes:

  * the configs it registers while imported (`fastmix.register(TrainConfig(...))`, or `add_provider`);
  * if it registers none: every `TrainConfig` bound at its top level — a variable holding one, or a list or
    tuple of them (openpi keeps its configs in `_CONFIGS = [TrainConfig(...), ...]`) — is registered.

A module that registers nothing and defines no TrainConfig is a ConfigError, as is one that does not import
(one line naming the entry and where the import failed). Each entry is imported once per process.

`CONFIG_NAME` may also name its module: `path/to/configs.py:my_config` or `my_pkg.my_configs:my_config`
(`resolve_config_name`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

from fastmix.errors import ConfigError
from fastmix.openpi import registry as _registry
from fastmix.openpi.config import TrainConfig

ENV_VAR = "FASTMIX_CONFIGS"
_MODULE_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_LOADED: dict[str, list[str]] = {}  # origin (absolute file path or module path) -> the config names it added


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The `--configs MODULE_OR_FILE` option (repeatable) of the commands that look a config up."""
    parser.add_argument("--configs", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import your own configs first: a module path (my_pkg.my_configs) or a .py file that "
                             f"calls fastmix.register (or defines TrainConfigs at top level); repeatable; also "
                             f"${ENV_VAR} (entries separated by '{os.pathsep}')")


def _is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or os.sep in entry or (os.altsep is not None and os.altsep in entry)


def _origin(entry: str) -> str:
    """How a command loads `entry` again from any directory: an absolute file path, or the module path."""
    return str(Path(entry).expanduser().resolve()) if _is_file_entry(entry) else entry


def _failure(entry: str, e: BaseException) -> ConfigError:
    """One line: the entry, the exception and the user's line where the import failed."""
    if isinstance(e, SyntaxError):
        where = f" ({e.filename}, line {e.lineno})"
    else:
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if "importlib" not in f.filename and not f.filename.startswith("<frozen")
                  and f.filename != __file__]
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return ConfigError(f"--configs {entry!r}: cannot import it: {type(e).__name__}: {text}{where}")


def _import(entry: str, origin: str) -> ModuleType:
    if _is_file_entry(entry):
        path = Path(origin)
        if not path.is_file():
            raise ConfigError(f"--configs {entry!r}: no such file ({path})")
        stem = re.sub(r"\W", "_", path.stem)
        name = f"_fastmix_user_configs_{stem}_{hashlib.sha1(origin.encode()).hexdigest()[:8]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"--configs {entry!r}: {path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    if not _MODULE_PATH.fullmatch(entry):
        raise ConfigError(f"--configs {entry!r}: neither a .py file nor a module path (such as my_pkg.my_configs)")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # the `fastmix` script: import from here, as `python -m` does
        sys.path.append(cwd)
    return importlib.import_module(entry)


def _top_level_configs(module: ModuleType) -> list[TrainConfig]:
    found: dict[int, TrainConfig] = {}
    for value in vars(module).values():
        items = value if isinstance(value, (list, tuple)) else (value,)
        for item in items:
            if isinstance(item, TrainConfig):
                found.setdefault(id(item), item)
    return list(found.values())


def _register_top_level(module: ModuleType, origin: str) -> bool:
    """Register the module's top-level TrainConfigs not registered yet; whether it has any (registered now or
    before, e.g. by an earlier import of the same module) or registered configs earlier from `origin`."""
    registered = {name: _registry.get_config(name) for name in _registry.list_configs()}
    configs = _top_level_configs(module)
    for config in configs:
        if registered.get(config.name) is not config:
            _registry.register(config)
    return bool(configs) or any(_registry.config_origin(name) in (origin, module.__name__) for name in registered)


def load_module(entry: str) -> list[str]:
    """Import one `--configs` entry (once per process) and register what it contributes (module docstring);
    returns the config names it added. ConfigError (one line naming the entry) when it does not import or
    contributes nothing."""
    entry = str(entry).strip()
    if not entry:
        raise ConfigError("--configs needs a module path or a .py file, got an empty string")
    origin = _origin(entry)
    if origin in _LOADED:
        return list(_LOADED[origin])
    before = set(_registry.list_configs())
    with _registry.loading_from(origin):
        try:
            module = _import(entry, origin)
            found = bool(set(_registry.list_configs()) - before) or _register_top_level(module, origin)
        except Exception as e:  # noqa: BLE001 - the user's module: any failure is reported in one line
            _forget(set(_registry.list_configs()) - before)
            if isinstance(e, ConfigError) and str(e).startswith("--configs"):
                raise
            raise _failure(entry, e) from e
    if not found:
        raise ConfigError(f"--configs {entry!r}: the module registered no config and defines no TrainConfig at "
                          "top level (call fastmix.register(TrainConfig(name=..., ...)) in it)")
    _LOADED[origin] = sorted(set(_registry.list_configs()) - before)
    return list(_LOADED[origin])


def _forget(names: Iterable[str]) -> None:
    """Unregister what a module that failed half-way registered (providers it added stay; they are functions)."""
    for name in names:
        try:
            _registry.unregister(name)
        except ConfigError:
            pass


def entries(cli_entries: Sequence[str] | None = None) -> list[str]:
    """`$FASTMIX_CONFIGS` entries, then the `--configs` ones (empty entries skipped)."""
    env = [e.strip() for e in os.environ.get(ENV_VAR, "").split(os.pathsep) if e.strip()]
    return env + [str(e) for e in (cli_entries or [])]


def load(cli_entries: Sequence[str] | None = None) -> list[str]:
    """Load every `$FASTMIX_CONFIGS` and `--configs` entry; returns the config names they added."""
    names: list[str] = []
    for entry in entries(cli_entries):
        names += load_module(entry)
    return names


def resolve_config_name(config_name: str) -> str:
    """`FILE.py:NAME` or `MODULE:NAME` → load FILE/MODULE (`load_module`), return NAME; any other name as is."""
    head, sep, tail = str(config_name).rpartition(":")
    if sep and tail and (head.endswith(".py") or _MODULE_PATH.fullmatch(head)):
        load_module(head)
        return tail
    return str(config_name)


def lookup(config_name: str, cli_entries: Sequence[str] | None = None) -> TrainConfig:
    """The config a command names, after loading the user's modules (`load`, `resolve_config_name`)."""
    load(cli_entries)
    return _registry.get_config(resolve_config_name(config_name))


def forget_loaded() -> None:
    """Unregister every config the loaded entries added and forget them (so they are imported again)."""
    for names in _LOADED.values():
        _forget(names)
    _LOADED.clear()


__all__ = ["ENV_VAR", "add_argument", "entries", "forget_loaded", "load", "load_module", "lookup",
           "resolve_config_name"]
