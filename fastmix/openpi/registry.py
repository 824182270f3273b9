"""The registry of named `TrainConfig`s (openpi's `get_config` / `cli`): configs added with `register`, and
config providers (`add_provider`: a function building configs when they are looked up, so that configs which
depend on the environment, such as the demo's data home, are built from the current one).

Layers above this one register what they own (`fastmix.demo` adds its configs as a provider); nothing here
knows them. The registry also remembers where each config came from (`config_origin`): built into fastmix,
the module or `.py` file the `fastmix` commands load with `--configs` (`fastmix.tools.user_configs`), or the
importable module that called `register` — so that a printed command (`command_for`) can load it again.
"""

from __future__ import annotations

import contextlib
import difflib
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

from fastmix.errors import ConfigError
from fastmix.openpi import norm_stats as _norm_stats
from fastmix.openpi.config import TrainConfig

Provider = Callable[[], Iterable[TrainConfig]]

BUILTIN = "fastmix"  # config_origin of the configs fastmix itself registers (the demo's)
CLOSE_MATCH_CUTOFF = 0.6  # difflib ratio a name must reach to be suggested for a mistyped one
_LIST_MAX = 8  # names a not-found error lists
CONFIGS_HINT = ("a config of your own is loaded with `--configs MODULE_OR_FILE` (a module path such as "
                "my_pkg.my_configs, or a .py file, that calls fastmix.register; or FASTMIX_CONFIGS)")

_REGISTRY: dict[str, TrainConfig] = {}
_PROVIDERS: list[Provider] = []
_ORIGINS: dict[str, str | None] = {}  # registered name -> origin (None: not known, e.g. a script's __main__)
_PROVIDER_ORIGINS: dict[int, str | None] = {}  # id(provider) -> origin
_LOADING: list[str] = []  # origins of the modules fastmix.tools.user_configs is importing now (innermost last)


@contextlib.contextmanager
def loading_from(origin: str) -> Iterator[None]:
    """Configs registered (or providers added) inside this block come from `origin` (how the `fastmix`
    commands load it again: a module path or a `.py` file path)."""
    _LOADING.append(origin)
    try:
        yield
    finally:
        _LOADING.pop()


def _caller_origin(depth: int) -> str | None:
    """The origin of a registration made by the function `depth` frames up: the module being loaded by
    `loading_from`, else fastmix (BUILTIN), else the caller's importable module name (None for `__main__`)."""
    if _LOADING:
        return _LOADING[-1]
    module = str(sys._getframe(depth + 1).f_globals.get("__name__", ""))
    if module == "fastmix" or module.startswith("fastmix."):
        return BUILTIN
    return None if module in ("", "__main__") else module


def add_provider(provider: Provider) -> Provider:
    """Add a function that builds configs at each lookup (registered names take precedence); idempotent."""
    if not callable(provider):
        raise ConfigError(f"add_provider() takes a function returning TrainConfigs, got {provider!r}")
    if provider not in _PROVIDERS:
        _PROVIDERS.append(provider)
        _PROVIDER_ORIGINS[id(provider)] = _caller_origin(1)
    return provider


def _all_configs_with_origins() -> tuple[dict[str, TrainConfig], dict[str, str | None]]:
    configs: dict[str, TrainConfig] = {}
    origins: dict[str, str | None] = {}
    for provider in _PROVIDERS:
        for c in provider():
            configs[c.name] = c
            origins[c.name] = _PROVIDER_ORIGINS.get(id(provider))
    configs.update(_REGISTRY)
    origins.update({name: _ORIGINS.get(name) for name in _REGISTRY})
    return configs, origins


def _all_configs() -> dict[str, TrainConfig]:
    return _all_configs_with_origins()[0]


def register(config: TrainConfig, *, overwrite: bool = False) -> TrainConfig:
    """Add `config` to the registry under `config.name` (ConfigError if taken, unless `overwrite`)."""
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"register() takes a TrainConfig, got {type(config).__name__}")
    if not overwrite and config.name in _all_configs():
        raise ConfigError(f"a config named '{config.name}' is already registered (pass overwrite=True)")
    _REGISTRY[config.name] = config
    _ORIGINS[config.name] = _caller_origin(1)
    return config


def unregister(name: str) -> None:
    """Remove a config added with `register` (ConfigError naming it if absent)."""
    if name not in _REGISTRY:
        raise ConfigError(f"no registered config named '{name}'")
    del _REGISTRY[name]
    _ORIGINS.pop(name, None)


def list_configs() -> list[str]:
    """The names of every registered config (providers' included), sorted."""
    return sorted(_all_configs())


def config_origin(config_name: str) -> str | None:
    """Where a registered config came from: BUILTIN ("fastmix"), the module path or `.py` file that registered
    it (what `--configs` takes), or None when not known (registered from a script, or not registered)."""
    return _all_configs_with_origins()[1].get(config_name)


def command_for(command: str, config_name: str) -> str:
    """A runnable `fastmix COMMAND [--configs ORIGIN] CONFIG_NAME` line for a registered config; when its
    module is not known, the line is followed by "(add --configs <your module>: ...)"."""
    origin = config_origin(config_name)
    if origin is None:
        return (f"`fastmix {command} {shlex.quote(config_name)}` (add --configs <your module>: the module "
                f"or .py file that registers '{config_name}')")
    configs = "" if origin == BUILTIN else f"--configs {shlex.quote(origin)} "
    return f"`fastmix {command} {configs}{shlex.quote(config_name)}`"


_norm_stats.set_command_for(command_for)  # the missing-norm-stats error prints a runnable command


def get_config(config_name: str) -> TrainConfig:
    """The registered config `config_name`. When not found: ConfigError suggesting a close name (difflib ratio
    >= 0.6), else listing the registered ones and saying how the `fastmix` commands load a user's configs."""
    configs = _all_configs()
    if config_name in configs:
        return configs[config_name]
    closest = difflib.get_close_matches(config_name, list(configs), n=1, cutoff=CLOSE_MATCH_CUTOFF)
    if closest:
        raise ConfigError(f"Config '{config_name}' not found. Did you mean '{closest[0]}'?")
    names = sorted(configs)
    shown = ", ".join(names[:_LIST_MAX]) + (f", ... ({len(names)} in all)" if len(names) > _LIST_MAX else "")
    raise ConfigError(f"Config '{config_name}' not found. Registered: {shown or '(none)'}; {CONFIGS_HINT}.")


def cli(args: Sequence[str] | None = None) -> TrainConfig:
    """Pick a registered config by name and override its fields from the command line (openpi's `cli()`)."""
    import tyro

    configs = _all_configs()
    return tyro.extras.overridable_config_cli({k: (k, v) for k, v in configs.items()}, args=args)


__all__ = ["BUILTIN", "add_provider", "cli", "command_for", "config_origin", "get_config", "list_configs",
           "loading_from", "register", "unregister"]
