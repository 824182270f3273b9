"""Pinned requirements for a seed environment, read from an openpi tree's own `uv.lock` (the fork's or
upstream's: both declare the same data-path dependencies, at a few different versions).

    python tests/seed/pins.py ../shared/seed/openpi/uv.lock > requirements.txt
    python tests/seed/pins.py ../shared/seed/openpi-upstream/uv.lock > requirements-upstream.txt

Prints `name==version` for the transitive closure (within the lock, markers evaluated for this interpreter) of
the packages the tree's *data path* imports: its config, data loader, transforms, tokenizer, norm-stats script
and the pinned lerobot's `lerobot.common.datasets`, and wandb, which the train scripts import (the seed tests
run them with wandb disabled). Packages only the examples need (notebook, gym, rerun, …) are left out;
`jax[cuda12]` becomes CPU `jax`. Where the lock's pin has no wheel for this platform the nearest wheel is used
and a pin with no wheel at all that nothing needs is left out: each is listed in SUBSTITUTES / SKIPPED and
printed to stderr.
"""

from __future__ import annotations

import sys

import tomllib
from packaging.markers import Marker

# openpi's direct dependencies (its pyproject, the same in both trees) that its data path imports, without extras.
OPENPI_ROOTS = [
    "augmax", "beartype", "dm-tree", "einops", "equinox", "filelock", "flatbuffers", "flax", "fsspec", "imageio",
    "jax", "jaxtyping", "ml-collections", "numpy", "numpydantic", "opencv-python", "orbax-checkpoint", "pillow",
    "sentencepiece", "torch", "tqdm-loggable", "transformers", "typing-extensions", "tyro",
    # `openpi.models.model` imports `models_pytorch`, which imports pytest (the fork's dev group)
    "pytest",
    # scripts/train.py and train_pytorch.py import wandb (the seed tests run them with wandb disabled)
    "wandb",
]
# openpi-client (a workspace member, installed from the fork's folder): all of its dependencies.
CLIENT_ROOTS = ["dm-tree", "msgpack", "numpy", "pillow", "tree", "websockets"]
# The pinned lerobot's dependencies that `lerobot.common.datasets` imports.
LEROBOT_ROOTS = [
    "av", "datasets", "draccus", "einops", "huggingface-hub", "jsonlines", "numba", "packaging", "torch",
    "torchcodec", "torchvision",
]
# fastmix's own runtime dependencies, at the fork's pins where the lock has them.
FASTMIX_ROOTS = ["numpy", "numba", "av", "pyarrow", "tqdm", "matplotlib", "scipy", "tyro", "torch"]

# Lock pins without a wheel for Linux x86_64 / CPython 3.11 on the package index: (name, lock version, used);
# applied only where the lock pins that version (upstream's av 17.0.0 has wheels).
SUBSTITUTES = {"av": ("14.4.0", "14.2.0")}
# Lock pins with no wheel at all, left out: (name, why it is not needed).
SKIPPED = {"tree": "0.2.4 is a source package only; the module `tree` that openpi_client imports is dm-tree's"}


def _applies(dep: dict) -> bool:
    marker = dep.get("marker")
    return marker is None or Marker(marker).evaluate({"extra": ""})


def closure(lock: dict, roots: dict[str, list[str]]) -> dict[str, str]:
    """{name: version} of the dependencies named in `roots` ({locked package: names of its dependencies to
    take}; "" for packages taken by name alone) and everything they depend on, markers evaluated here. A name
    may be locked at several versions for different markers: a dependency entry then names its version."""
    versions: dict[str, dict[str, dict]] = {}
    for pkg in lock["package"]:
        versions.setdefault(pkg["name"], {})[pkg["version"]] = pkg
    todo: list[tuple[str, str | None]] = []
    for parent, names in roots.items():
        if parent == "":
            todo += [(name, None) for name in names]
            continue
        (pkg,) = versions[parent].values()
        entries = [*pkg.get("dependencies", []), *pkg.get("dev-dependencies", {}).get("dev", [])]
        todo += [(d["name"], d.get("version")) for d in entries if d["name"] in names and _applies(d)]
    seen: dict[str, str] = {}
    while todo:
        name, version = todo.pop()
        if name in seen:
            if version is not None and seen[name] != version:
                raise SystemExit(f"pins.py: {name} is needed at {seen[name]} and {version}")
            continue
        candidates = versions.get(name)
        if not candidates:
            raise SystemExit(f"pins.py: {name!r} is not in the lock")
        if version is None:
            if len(candidates) > 1:
                raise SystemExit(f"pins.py: {name} is locked at {sorted(candidates)}; name it through its parent")
            version = next(iter(candidates))
        pkg = candidates[version]
        if "registry" not in pkg.get("source", {}):
            continue  # git / editable / workspace packages are installed from ../shared/seed
        seen[name] = version
        todo += [(d["name"], d.get("version")) for d in pkg.get("dependencies", []) if _applies(d)]
    return seen


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        lock = tomllib.load(f)
    pins = closure(lock, {"openpi": OPENPI_ROOTS, "openpi-client": CLIENT_ROOTS, "lerobot": LEROBOT_ROOTS,
                         "": FASTMIX_ROOTS})
    for name, (locked, used) in SUBSTITUTES.items():
        if pins.get(name) == locked:
            print(f"pins.py: {name}=={locked} (lock) has no wheel here; using {name}=={used}", file=sys.stderr)
            pins[name] = used
    for name, why in SKIPPED.items():
        if pins.pop(name, None) is not None:
            print(f"pins.py: leaving out {name}: {why}", file=sys.stderr)
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
