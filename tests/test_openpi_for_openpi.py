"""`fastmix.openpi.for_openpi` and `fastmix.openpi.launch` where openpi is not installed (the main environment):
clear errors naming what is missing. Their behaviour with the real openpi trees is tested in tests/seed
(test_multi_config.py)."""

from __future__ import annotations

import sys

import pytest

import fastmix.openpi
from fastmix.errors import ConfigError
from fastmix.openpi import for_openpi, launch


@pytest.fixture
def no_openpi(monkeypatch):
    monkeypatch.setitem(sys.modules, "openpi", None)  # import openpi -> ImportError
    for_openpi._classes.cache_clear()
    yield
    for_openpi._classes.cache_clear()


def test_configs_need_openpi(no_openpi):
    for get in (lambda: fastmix.openpi.MultiDatasetLeRobotConfig, lambda: fastmix.openpi.MultiDatasetDataConfig,
                lambda: fastmix.openpi.register_openpi_configs()):
        with pytest.raises(ImportError, match=r"openpi\.training\.config.*not importable"):
            get()


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="NoSuchConfig"):
        _ = for_openpi.NoSuchConfig  # noqa: B018
    assert {"MultiDatasetLeRobotConfig", "register_openpi_configs"} <= set(dir(fastmix.openpi))


def test_launch_configs_files(tmp_path):
    empty = tmp_path / "no_configs.py"
    empty.write_text("X = 1\n")
    assert launch.load_configs(str(empty)) == []
    wrong = tmp_path / "wrong_configs.py"
    wrong.write_text("CONFIGS = 'pi05_libero'\n")
    with pytest.raises(ConfigError, match=r"wrong_configs\.py: CONFIGS must be a list"):
        launch.load_configs(str(wrong))
    with pytest.raises(ConfigError, match=r"missing_configs\.py: no such file"):
        launch.load_configs(str(tmp_path / "missing_configs.py"))
    with pytest.raises(ConfigError, match=r"no_such_module_xyz: not a file"):
        launch.load_configs("no_such_module_xyz")


def test_launch_without_a_script_or_openpi(tmp_path, capsys, no_openpi):
    with pytest.raises(SystemExit) as info:
        launch.main([str(tmp_path / "train.py")])
    assert info.value.code == 2 and "no such script" in capsys.readouterr().err
    script = tmp_path / "train.py"
    script.write_text("raise SystemExit('the script must not run')\n")
    with pytest.raises(ConfigError, match="openpi is not importable"):
        launch.main([str(script), "some_config"])
