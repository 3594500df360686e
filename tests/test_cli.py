"""Every command: an unknown or misspelled flag is one line naming it, with the closest known flag, and a non-zero
exit, even when a required flag is missing too (argparse reports that first, which would hide the typo)."""

from __future__ import annotations

import importlib

import pytest

COMMANDS = {  # module -> (argv before the bad flag, the prog printed)
    "graphs.adapt": ([], "python -m graphs.adapt"),
    "graphs.simulate": ([], "python -m graphs.simulate"),
    "graphs.judge": ([], "python -m graphs.judge"),
    "graphs.contrast": ([], "python -m graphs.contrast"),
    "graphs.view": ([], "python -m graphs.view"),
    "graphs.scenarios": (["export"], "python -m graphs.scenarios export"),
    "graphs.store": (["backup"], "python -m graphs.store backup"),
    "training.dataset": ([], "python -m training.dataset"),
    "training.sft": ([], "python -m training.sft"),
    "training.dpo": ([], "python -m training.dpo"),
    "eval.wvs.run": ([], "python -m eval.wvs"),
    "eval.compare": ([], "python -m eval.compare"),
    "eval.culture_map.cli": ([], "python -m eval.culture_map"),
    "eval.culture_map.fit": ([], "python -m eval.culture_map.fit"),
    "study.__main__": (["plan"], "python -m study"),
}


@pytest.mark.parametrize("module", COMMANDS)
def test_an_unknown_flag_is_one_line_with_its_name(module, capsys):
    before, prog = COMMANDS[module]
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main([*before, "--bogus-flag", "1"])
    err = capsys.readouterr().err.strip() or str(exit_.value.code)
    assert exit_.value.code not in (0, None)
    assert len(err.splitlines()) == 1, err
    assert "unrecognized argument --bogus-flag" in err and prog in err


@pytest.mark.parametrize(("module", "typo", "meant"), [
    ("graphs.simulate", "--episdoes", "--episodes"),
    ("graphs.contrast", "--modle", "--model"),
    ("graphs.judge", "--cultre", "--culture"),
    ("graphs.adapt", "--nn", "--n"),
    ("training.dataset", "--culturee", "--culture"),
    ("eval.wvs.run", "--modle", "--model"),
    ("training.sft", "--output-dri", "--output-dir"),
])
def test_a_misspelled_flag_names_the_one_meant_before_any_missing_one(module, typo, meant, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main([typo, "x"])
    err = capsys.readouterr().err.strip() or str(exit_.value.code)
    assert err.endswith(f"unrecognized argument {typo} (did you mean {meant}?)"), err


def test_an_abbreviation_argparse_accepts_is_not_called_unknown(capsys):
    from graphs.simulate import main

    with pytest.raises(SystemExit):
        main(["--epis", "2"])  # a prefix of --episodes: the missing --culture is what is wrong
    assert "required: --culture" in capsys.readouterr().err
