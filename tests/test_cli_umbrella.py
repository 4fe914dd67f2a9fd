"""The `meerkit` umbrella: only the chosen command's module is imported, --version, global
flags before or after the command, child-library logging quiet unless -v, and a quiet end
(exit 141) when the reader of stdout goes away; `python -m train|export` parse what
`meerkit train|export` would, without importing the umbrella."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

from edge_runtime.contract.command_line import add_global_flags_everywhere
from edge_runtime.contract.errors import BROKEN_PIPE_EXIT
from meerkit.cli import COMMANDS, build_parser, chosen_command, main, package_version

COMMAND_PACKAGES = ("train", "export", "server", "torch", "soundfile", "tensorflow", "paho")


def python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, **kwargs)


def loaded_after(argv: list[str]) -> list[str]:
    """Top-level packages of COMMAND_PACKAGES imported by `meerkit ARGV`."""
    code = ("import sys\nfrom meerkit.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(COMMAND_PACKAGES)!r}),"
            " file=sys.stderr)\n")
    done = python(code, *argv)
    return eval(done.stderr.strip().splitlines()[-1])  # a printed list of names


def test_help_lists_every_command_without_importing_any(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(command.help.split()[0])}", out, re.M), name
    assert loaded_after(["--help"]) == []


def test_only_the_chosen_command_is_imported():
    assert set(loaded_after(["subscribe", "--help"])) <= {"server", "paho"}
    assert "train" in loaded_after(["synth", "--help"])
    assert "export" not in loaded_after(["synth", "--help"])


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_version_is_the_package_version_and_matches_edge_runtime(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"meerkit {package_version()}"
    done = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "--version"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.stdout.split()[-1] == package_version()


def test_chosen_command_skips_global_flags():
    assert chosen_command(["-v", "data", "validate", "x"]) == "data"
    assert chosen_command(["--quiet", "--help"]) is None
    assert chosen_command(["nonsense"]) is None


@pytest.mark.parametrize("argv,verbose", [
    (["data", "validate", "d"], False),
    (["-v", "data", "validate", "d"], True),
    (["data", "-v", "validate", "d"], True),
    (["data", "validate", "d", "--verbose"], True),
])
def test_global_flags_work_before_and_after_the_command(argv, verbose):
    parser = build_parser({"data"})
    add_global_flags_everywhere(parser)
    args = parser.parse_args(argv)
    assert args.verbose is verbose and args.quiet is False


def test_quiet_after_the_command_lowers_the_log_level(tmp_path):
    code = ("import logging, sys\nfrom meerkit.cli import main\n"
            "main(['synth', sys.argv[1], '--preset', 'tiny', '--sample-rate', '4000', '-q'])\n"
            "print(logging.getLogger().level, file=sys.stderr)\n")
    done = python(code, str(tmp_path / "synth"))
    assert "sample rate 4000 Hz" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "30"  # WARNING


def test_child_library_noise_is_silenced_unless_verbose():
    code = ("import json, logging, os, sys\n"
            "from edge_runtime.contract.command_line import setup_logging\n"
            "setup_logging(verbose=sys.argv[1] == 'v')\n"
            "print(json.dumps([os.environ.get('TF_CPP_MIN_LOG_LEVEL'),"
            " logging.getLogger('matplotlib').getEffectiveLevel(),"
            " logging.getLogger('absl').getEffectiveLevel()]))\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    assert json.loads(python(code, "-", env=env).stdout) == ["2", 40, 40]
    assert json.loads(python(code, "v", env=env).stdout) == [None, 10, 10]
    # Through the umbrella, the flag after the command (a user mistake ends the run early).
    through_main = ("import json, os, sys\nfrom meerkit.cli import main\n"
                    "main(['synth', sys.argv[1], '--sample-rate', '4000', sys.argv[2]])\n"
                    "print(json.dumps(os.environ.get('TF_CPP_MIN_LOG_LEVEL')))\n")
    for flag, expected in (("-q", "2"), ("-v", None)):
        done = python(through_main, "/nonexistent/synth", flag, env=env)
        assert json.loads(done.stdout.splitlines()[-1]) == expected, (flag, done.stderr)


def test_a_missing_extra_is_one_line_and_exit_2():
    # soundfile blocked as on a machine with only the [server] extra.
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.partition('.')[0] == 'soundfile':\n"
            "            raise ModuleNotFoundError(name, name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from meerkit.cli import main\nsys.exit(main(['data', 'validate', 'x']))\n")
    done = python(code)
    assert done.returncode == 2
    assert done.stderr.strip() == ("meerkit data needs the [train] extra: pip install "
                                   "'meerkit[train]' (missing module: soundfile)")


def test_a_closed_pipe_ends_quietly_with_141():
    # The reader is gone before the command writes anything: no traceback, exit 141.
    code = ("import argparse, sys\n"
            "from edge_runtime.contract.command_line import run_command_line\n"
            "parser = argparse.ArgumentParser(prog='t')\n"
            "def handler(args):\n"
            "    for i in range(100000):\n"
            "        print('line', i)\n"
            "    return 0\n"
            "parser.set_defaults(func=handler)\n"
            "sys.exit(run_command_line(parser, [], 't'))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(60) == BROKEN_PIPE_EXIT and err == b""


def test_meerkit_output_into_a_closed_pipe_has_no_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "meerkit.cli", "data", "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(60) in (0, BROKEN_PIPE_EXIT) and b"Traceback" not in err, err


@pytest.mark.parametrize("package", ["train", "export"])
def test_python_m_package_is_the_same_command_without_the_umbrella(package):
    code = ("import runpy, sys\nsys.argv = [sys.argv[1], '--help']\n"
            "try:\n    runpy.run_module(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as stop:\n    code = stop.code\n"
            "print(code, 'meerkit' in sys.modules, file=sys.stderr)\n")
    done = python(code, package)
    assert done.stdout.startswith(f"usage: python -m {package} [-h] [-v | -q] STEP")
    assert done.stderr.strip().splitlines()[-1] == "0 False"


def test_run_turns_a_user_error_into_one_line(capsys):
    from edge_runtime.contract.errors import UserError
    from meerkit.cli import run

    def handler(args: argparse.Namespace) -> int:
        raise UserError("data/x: not a dataset folder")

    assert run(handler, argparse.Namespace()) == 2
    assert capsys.readouterr().err == "meerkit: error: data/x: not a dataset folder\n"
