"""The `frernn` command: help written for users, and only what a command needs is imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from frernn.cli import COMMANDS, main

HEAVY = ("torch", "matplotlib", "papermill", "nbformat", "nbconvert", "pandas", "torch._dynamo")


def modules_after(code: str) -> set[str]:
    """Heavy modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    return set(json.loads(out.splitlines()[-1])) & set(HEAVY)


def run_main(argv: list[str]) -> str:
    return f"from frernn.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"


def test_top_level_help_imports_no_library_stack():
    assert modules_after(run_main(["--help"])) == set()


def test_train_help_imports_no_plotting_or_notebooks():
    assert modules_after(run_main(["train", "--help"])) == {"torch"}


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "Equilibrium Propagation" in out and "examples:" in out
    assert "Each concern module" not in out  # not the developer docstring
    for name, command in COMMANDS.items():
        assert f"    {name}" in out
        assert command.summary.split()[0] in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_help_says_what_it_does_with_an_example(capsys, name):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: frernn {name}" in out
    assert COMMANDS[name].description.split()[0] in out
    assert f"example:\n  frernn {name} " in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_training_step_does_not_import_the_compiler_stack(tmp_path, fmnist_dir):
    """Optimiser construction, steps and state_dict stay eager: no torch._dynamo (which
    torchvision does import: the decoded-tensor cache is built beforehand, as the workflow's
    dataset rule does)."""
    from frernn import data

    data.load("fashion_mnist", fmnist_dir)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "dataset: fashion_mnist\n"
        "train: {epochs: 1, batch_size: 100, train_subset: 300, test_subset: 100}\n"
        "optim: {name: adamw, schedule: cosine, clip: 1.0}\n"
    )
    argv = ["train", str(spec), "--out", str(tmp_path / "run"), "--data-dir", str(fmnist_dir)]
    imported = modules_after(run_main(argv))
    assert (tmp_path / "run" / "metrics.json").exists()
    assert "torch._dynamo" not in imported and "matplotlib" not in imported
