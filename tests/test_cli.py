"""The ``fvlens`` parser registers every subcommand, including the relational and analyses ones."""

from __future__ import annotations

import pytest

from fvlens.cli import build_parser, main

SUBCOMMANDS = ("tasks", "baseline", "run", "steer", "report", "download", "finetune",
               "similarity", "analogies", "strategies", "transfer", "frames", "sweep")


def test_every_subcommand_is_registered():
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert tuple(choices) == SUBCOMMANDS


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_subcommand_help_exits_zero(sub, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([sub, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: fvlens {sub}" in capsys.readouterr().out


def test_registered_handlers_are_the_modules_own():
    from fvlens.cli.analyses import cmd_frames
    from fvlens.cli.relational import cmd_finetune

    assert build_parser().parse_args(["frames", "--task", "antonym", "--out", "x"]).func is cmd_frames
    args = build_parser().parse_args(["finetune", "--task", "antonym", "--out", "x"])
    assert args.func is cmd_finetune


def test_every_model_subcommand_has_the_model_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    loading = [name for name, p in sub.choices.items()
               if any("--model" in a.option_strings for a in p._actions)]
    assert set(loading) >= {"baseline", "run", "steer", "finetune", "similarity", "analogies",
                            "strategies", "transfer", "frames"}
    for name in loading:
        opts = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert {"--device", "--dtype", "--n-devices"} <= opts, name
    args = parser.parse_args(["run", "--device", "cpu", "--dtype", "bfloat16"])
    assert (args.device, args.dtype, args.n_devices) == ("cpu", "bfloat16", 1)


def test_help_and_tasks_start_without_torch():
    """`fvlens --help`, `fvlens tasks` and the parser of every subcommand import no torch."""
    import subprocess
    import sys

    code = ("import sys; from fvlens.cli import build_parser, main; build_parser(); "
            "main(['tasks']); print('torch' in sys.modules, 'transformer_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"
