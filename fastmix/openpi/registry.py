"""The registry of named `TrainConfig`s (openpi's `get_config` / `cli`): configs added with `register`, and
config providers (`add_provider`: a function building configs when they are looked up, so that configs which
depend on the environment, such as the demo's data home, are built from the current one).

Layers above this one register what they own (`fastmix.demo` adds its configs as a provider); nothing here
knows them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence

from fastmix.errors import ConfigError
from fastmix.openpi.config import TrainConfig

Provider = Callable[[], Iterable[TrainConfig]]

_REGISTRY: dict[str, TrainConfig] = {}
_PROVIDERS: list[Provider] = []


def add_provider(provider: Provider) -> Provider:
    """Add a function that builds configs at each lookup (registered names take precedence); idempotent."""
    if not callable(provider):
        raise ConfigError(f"add_provider() takes a function returning TrainConfigs, got {provider!r}")
    if provider not in _PROVIDERS:
        _PROVIDERS.append(provider)
    return provider


def _all_configs() -> dict[str, TrainConfig]:
    configs = {c.name: c for provider in _PROVIDERS for c in provider()}
    configs.update(_REGISTRY)
    return configs


def register(config: TrainConfig, *, overwrite: bool = False) -> TrainConfig:
    """Add `config` to the registry under `config.name` (ConfigError if taken, unless `overwrite`)."""
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"register() takes a TrainConfig, got {type(config).__name__}")
    if not overwrite and config.name in _all_configs():
        raise ConfigError(f"a config named '{config.name}' is already registered (pass overwrite=True)")
    _REGISTRY[config.name] = config
    return config


def unregister(name: str) -> None:
    """Remove a config added with `register` (ConfigError naming it if absent)."""
    if name not in _REGISTRY:
        raise ConfigError(f"no registered config named '{name}'")
    del _REGISTRY[name]


def list_configs() -> list[str]:
    """The names of every registered config (providers' included), sorted."""
    return sorted(_all_configs())


def get_config(config_name: str) -> TrainConfig:
    """The registered config `config_name`; ConfigError with the closest name when not found."""
    configs = _all_configs()
    if config_name not in configs:
        closest = difflib.get_close_matches(config_name, list(configs), n=1, cutoff=0.0)
        hint = f" Did you mean '{closest[0]}'? " if closest else ""
        raise ConfigError(f"Config '{config_name}' not found.{hint}".rstrip())
    return configs[config_name]


def cli(args: Sequence[str] | None = None) -> TrainConfig:
    """Pick a registered config by name and override its fields from the command line (openpi's `cli()`)."""
    import tyro

    configs = _all_configs()
    return tyro.extras.overridable_config_cli({k: (k, v) for k, v in configs.items()}, args=args)


__all__ = ["add_provider", "cli", "get_config", "list_configs", "register", "unregister"]
