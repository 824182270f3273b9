"""README.md is what a new user reads first: its commands parse, its paths exist, and it says what fastmix is
for, where datasets must live and which lerobot versions it supports."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _fastmix_commands(text: str) -> list[list[str]]:
    """Every `fastmix ...` command line of the bash blocks (comments and env assignments stripped)."""
    out = []
    for block in _bash_blocks(text):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words[:1] == ["fastmix"]:
                    out.append(words[1:])
    return out


def test_the_opening_says_what_fastmix_is_for_first() -> None:
    text = README.read_text()
    opening = text.split("\n## ", 1)[0].split("\n\n")[1]  # the first paragraph after the title
    assert "co-training" in opening and "dataset_weights" in opening and len(opening.split()) < 90


def test_it_says_where_datasets_live_and_which_lerobot_versions() -> None:
    text = README.read_text()
    assert "### Where the datasets must live" in text and "$HF_LEROBOT_HOME" in text and "lerobot_home=" in text
    assert "## lerobot versions" in text and "lerobot[dataset]>=0.4.4,<0.7" in text


@pytest.mark.parametrize("argv", _fastmix_commands(README.read_text()), ids=" ".join)
def test_every_fastmix_command_in_the_readme_parses(argv: list[str]) -> None:
    """The CLI's own parser accepts each command as written (nothing is run)."""
    import argparse
    import importlib

    from fastmix import cli

    parser = argparse.ArgumentParser(prog="fastmix")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, _) in cli._COMMANDS.items():
        importlib.import_module(module).add_arguments(sub.add_parser(name))
    parser.parse_args(argv)


def test_module_paths_named_in_the_readme_exist() -> None:
    root = README.parent
    text = README.read_text()
    for path in sorted(set(re.findall(r"`((?:fastmix|csrc|benchmarks|tests|docs)/[\w./-]+\.(?:py|md|hpp))`", text))):
        assert (root / path).exists(), path
    for module in sorted(set(re.findall(r"python -m (fastmix[\w.]*)", text))):
        assert (root / (module.replace(".", "/") + ".py")).exists() or (root / module.replace(".", "/")).is_dir(), module
