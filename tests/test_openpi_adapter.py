"""fastmix.openpi.install() against a stand-in `openpi` package with openpi's function signatures."""

from __future__ import annotations

import inspect
import sys
import textwrap

import numpy as np
import pytest

from fastmix import openpi as adapter
from fastmix.loader.options import WorkerOptions
from fastmix.openpi import data_loader as DL

FAKE_DATA_LOADER = '''
"""Stand-in for openpi.training.data_loader: openpi's signatures, bodies that record being called."""
CALLS = []


def create_torch_dataset(data_config, action_horizon, model_config):
    CALLS.append("create_torch_dataset")
    return "openpi dataset"


def create_data_loader(config, *, sharding=None, shuffle=False, num_batches=None, skip_norm_stats=False,
                       framework="jax"):
    CALLS.append("create_data_loader")
    return "openpi loader"
'''

FAKE_MODEL = '''
import dataclasses


@dataclasses.dataclass
class Observation:
    images: dict
    image_masks: dict
    state: object
    tokenized_prompt: object = None
    tokenized_prompt_mask: object = None

    @classmethod
    def from_dict(cls, data):
        return cls(images=data["image"], image_masks=data["image_mask"], state=data["state"],
                   tokenized_prompt=data.get("tokenized_prompt"), tokenized_prompt_mask=data.get("tokenized_prompt_mask"))
'''


@pytest.fixture
def fake_openpi(tmp_path, monkeypatch):
    root = tmp_path / "site"
    for pkg in ("openpi", "openpi/training", "openpi/models"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "openpi/training/data_loader.py").write_text(textwrap.dedent(FAKE_DATA_LOADER))
    (root / "openpi/models/model.py").write_text(textwrap.dedent(FAKE_MODEL))
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == "openpi" or m.startswith("openpi.")]:
        monkeypatch.delitem(sys.modules, name)
    import openpi.training.data_loader as dl

    yield dl
    adapter.uninstall()
    for name in [m for m in sys.modules if m == "openpi" or m.startswith("openpi.")]:
        sys.modules.pop(name, None)


def test_install_without_openpi_changes_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "openpi", None)  # import openpi -> ImportError
    with pytest.warns(RuntimeWarning, match="changed nothing"):
        assert adapter.install() is False
    assert adapter.is_installed() is False


def test_signatures_match_openpi(fake_openpi):
    for name in ("create_torch_dataset", "create_data_loader"):
        theirs = inspect.signature(getattr(fake_openpi, name))
        ours = inspect.signature(getattr(adapter, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in theirs.parameters.values()
        ]


def test_install_routes_and_uninstall_restores(fake_openpi, monkeypatch, tmp_path):
    from fastmix.loader.loader import MixtureLoader
    from fastmix.testing.fakes import FakeReader, FakeSource
    from tests.test_data_loader import _with_stats

    sources = [FakeSource("fake/a", num_episodes=2, episode_length=5), FakeSource("fake/b", num_episodes=1, episode_length=4)]
    monkeypatch.setattr(DL, "open_sources", lambda data_config: sources)
    monkeypatch.setattr(DL, "make_mixture_loader", lambda s, **kw: MixtureLoader(s, **kw, workers=WorkerOptions(reader_factory=FakeReader)))
    cfg = _with_stats(tmp_path, weights=[1.0, 2.0])

    original = fake_openpi.create_data_loader
    assert adapter.install() is True and adapter.is_installed()
    assert adapter.install() is True  # idempotent
    assert fake_openpi.create_data_loader is adapter.create_data_loader

    loader = fake_openpi.create_data_loader(cfg, shuffle=True, num_batches=2, framework="pytorch")
    assert fake_openpi.CALLS == []  # openpi's own loader never ran
    from openpi.models.model import Observation as OpenpiObservation

    batches = list(loader)
    assert len(batches) == 2
    obs, actions = batches[0]
    assert isinstance(obs, OpenpiObservation)  # openpi's own Observation.from_dict built it
    assert tuple(actions.shape) == (4, 3, 32) and tuple(obs.state.shape) == (4, 32)
    assert hasattr(loader, "set_epoch") and loader.data_config().dataset_weights == (1.0, 2.0)
    loader.close()

    # jax framework default (openpi's): numpy arrays when jax is absent
    with fake_openpi.create_data_loader(cfg, num_batches=1) as jl:
        _, acts = next(iter(jl))
    assert isinstance(acts, np.ndarray)

    adapter.uninstall()
    assert fake_openpi.create_data_loader is original and not adapter.is_installed()


def test_fake_and_rlds_configs_stay_on_openpi(fake_openpi):
    import dataclasses as dc
    import pathlib

    from fastmix.openpi import config as C

    adapter.install()

    @dc.dataclass(frozen=True)
    class RLDSFactory(C.DataConfigFactory):
        def create(self, assets_dirs, model_config):
            cfg = C.DataConfig(repo_id="droid")
            object.__setattr__(cfg, "rlds_data_dir", "/data/rlds")
            return cfg

    rlds = C.TrainConfig(name="rlds", data=RLDSFactory())
    assert fake_openpi.create_data_loader(rlds) == "openpi loader"
    fake = C.TrainConfig(name="fake")  # FakeDataConfig: repo_id "fake"
    assert fake_openpi.create_data_loader(fake) == "openpi loader"
    assert fake_openpi.create_torch_dataset(fake.data.create(pathlib.Path("/tmp"), fake.model), 10, fake.model) == "openpi dataset"
    assert fake_openpi.CALLS == ["create_data_loader", "create_data_loader", "create_torch_dataset"]
