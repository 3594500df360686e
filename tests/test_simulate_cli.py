"""Bad command lines fail before anything is stored, with one line naming what is wrong."""

import pytest

from agents.cultures import BUILTIN_DIR
from graphs.simulate import main


def fails(argv, tmp_path) -> str:
    db = tmp_path / "s.db"
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--db", str(db), "--no-progress"])
    message = str(caught.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert not db.exists()
    return message


def test_unknown_culture(tmp_path):
    assert "unknown culture 'XYZ' (available: AUS, " in fails(["--culture", "XYZ", "--model", "puppet"], tmp_path)


def test_malformed_culture_file(tmp_path):
    user = tmp_path / "cultures"
    user.mkdir()
    text = (BUILTIN_DIR / "chn.yaml").read_text().replace("power_distance: 80", "power_distance: lots")
    (user / "chn.yaml").write_text(text)
    message = fails(["--culture", "CHN", "--cultures-dir", str(user), "--model", "puppet"], tmp_path)
    assert "chn.yaml: field hofstede_scores.power_distance: Input should be a valid integer" in message


def test_bad_model_spec(tmp_path):
    assert "openai:<model>@<http base url>" in fails(["--culture", "CHN", "--model", "openai:gpt", "--use-seeds"],
                                                     tmp_path)


def test_no_adapted_scenarios_is_reported_before_the_model_loads(tmp_path):
    message = fails(["--culture", "CHN", "--model", "no/such-model"], tmp_path)
    assert "no adapted scenarios for CHN" in message and "--use-seeds" in message


def test_non_positive_counts(tmp_path):
    assert "must be at least 1" in fails(["--culture", "CHN", "--episodes", "0", "--model", "puppet"], tmp_path)
