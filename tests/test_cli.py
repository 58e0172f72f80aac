"""The `dpinstruct` command (dpinstruct/cli.py): its subcommands, dispatch to the chosen tool's
``run`` and exit code, and a `--help` that imports no tool module (so it answers at once)."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

import pytest

from dpinstruct import cli
from tests.conftest import REPO

PROBE_CALLS: list[argparse.Namespace] = []


# --- a subcommand module, as every tool is: add_arguments(parser) and run(args) ----------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--code", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    PROBE_CALLS.append(args)
    return args.code


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "probe", (__name__, "a command for this test"))
    PROBE_CALLS.clear()
    return PROBE_CALLS


def test_main_runs_the_chosen_command_and_returns_its_exit_code(probe):
    assert cli.main(["probe"]) == 0
    assert cli.main(["probe", "--code", "3"]) == 3
    assert [(a.command, a.code) for a in probe] == [("probe", 0), ("probe", 3)]


def test_main_reads_the_command_line_when_given_no_argv(probe, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dpinstruct", "probe", "--code", "5"])
    assert cli.main() == 5 and probe[-1].code == 5


def test_a_missing_or_unknown_command_is_a_usage_error(probe, capsys):
    for argv in ([], ["no-such-command"], ["--code", "1"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: <command>" in err and "invalid choice: 'no-such-command'" in err
    assert probe == []


def test_only_the_chosen_commands_module_is_loaded():
    parser = cli.build_parser()  # no command chosen: every subcommand listed, none of them loaded
    args = parser.parse_args(["lineage"])
    assert args.command == "lineage" and not hasattr(args, "run")
    with pytest.raises(SystemExit):  # and their options are unknown until then
        parser.parse_args(["lineage", "--root", "."])


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_is_its_modules_add_arguments_and_run(name, capsys):
    module = importlib.import_module(cli.COMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    args = cli.build_parser(name).parse_args([name, *{"tune": ["ppo-clip"]}.get(name, [])])
    assert args.command == name and args.run is module.run
    with pytest.raises(SystemExit) as exit_info:  # its help states the summary the command list shows
        cli.build_parser(name).parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert " ".join(cli.COMMANDS[name][1].split()[:4]) in " ".join(capsys.readouterr().out.split())


def test_help_lists_every_command_and_imports_no_tool():
    # a fresh interpreter: `python -m dpinstruct --help` as a user types it, then which modules that loaded
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shown = subprocess.run([sys.executable, "-m", "dpinstruct", "--help"], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    for name in cli.COMMANDS:
        assert f"\n    {name} " in shown.stdout
    loaded = subprocess.run([sys.executable, "-c", HELP_THEN_MODULES], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=60, check=False)
    assert loaded.returncode == 0 and "usage: dpinstruct" in loaded.stdout
    assert sorted(loaded.stderr.split()) == ["dpinstruct", "dpinstruct.cli"]


HELP_THEN_MODULES = """
import sys
from dpinstruct.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print(" ".join(m for m in sys.modules if m.startswith(("dpinstruct", "torch", "pandas"))), file=sys.stderr)
"""
