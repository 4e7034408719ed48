"""The ``fvlens`` parser registers every subcommand, including the relational and analyses ones."""

from __future__ import annotations

import pytest

from fvlens.cli import build_parser, main

SUBCOMMANDS = ("tasks", "baseline", "run", "steer", "report", "finetune", "similarity",
               "analogies", "strategies", "transfer", "frames")


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
