"""Survey (WVS respondent) files: every bad cell, row or column is a one-line error or a counted exclusion.

The reported case: a file listing the same interview id twice was counted twice without a word.
"""

import json

import pytest

from agents.models import Model, ScriptedBackend
from eval.wvs.items import WVSError, all_items
from eval.wvs.respondents import RespondentFile
from eval.wvs.run import EvalConfig, evaluate, main

Q1 = all_items()["Q1"]  # codes 1-4
HEADER = "B_COUNTRY,D_INTERVIEW,W_WEIGHT,Q1,Q260\n"


def write(tmp_path, text, name="wvs.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


class TestDuplicatedInterviews:
    def test_a_repeated_row_is_counted_once_and_reported(self, tmp_path):
        # the reported case: interview 392000002 listed twice
        path = write(tmp_path, HEADER + "392,392000001,1.0,1,1\n392,392000002,3.0,2,2\n392,392000002,3.0,2,2\n")
        data = RespondentFile(path, [Q1])
        assert [r.interview for r in data.respondents("JPN")] == ["392000001", "392000002"]
        assert data.distribution("JPN", Q1).tolist() == [0.25, 0.75, 0.0, 0.0]  # not 1/7, 6/7
        [excluded] = data.exclusions
        assert (excluded.country, excluded.column, excluded.count, excluded.lines) == ("JPN", "D_INTERVIEW", 1, [4])
        assert str(excluded) == "JPN D_INTERVIEW: 1 x row repeating an earlier row (line 4)"

    def test_the_same_id_with_different_answers_is_an_error_naming_both_lines(self, tmp_path):
        path = write(tmp_path, HEADER + "392,392000001,1.0,1,1\n392,392000002,1.0,2,2\n392,392000001,1.0,4,1\n")
        with pytest.raises(WVSError) as exc:
            RespondentFile(path, [Q1])
        assert str(exc.value) == (f"{path}: line 4: column D_INTERVIEW: 392000001 (JPN) is already on line 2 "
                                  "with different cells")

    def test_the_same_id_in_two_countries_is_two_respondents(self, tmp_path):
        path = write(tmp_path, HEADER + "392,7,1.0,1,1\n484,7,1.0,2,1\n")
        data = RespondentFile(path, [Q1])
        assert len(data.respondents("JPN")) == len(data.respondents("MEX")) == 1 and data.exclusions == []

    def test_an_empty_interview_id_is_an_error(self, tmp_path):
        path = write(tmp_path, HEADER + "392,,1.0,1,1\n")
        with pytest.raises(WVSError, match="line 2: column D_INTERVIEW: empty"):
            RespondentFile(path, [Q1])

    def test_a_file_without_interview_ids_says_so(self, tmp_path):
        path = write(tmp_path, "B_COUNTRY,W_WEIGHT,Q1\n392,1,1\n392,1,1\n")
        data = RespondentFile(path, [Q1])
        assert "D_INTERVIEW" in data.missing_columns
        assert [r.interview for r in data.respondents("JPN")] == ["2", "3"]


class TestCodes:
    def test_codes_outside_the_items_range_are_counted_per_country_and_column(self, tmp_path):
        rows = ["392,1,1.0,1,1", "392,2,1.0,7,1", "392,3,1.0,0,1", "392,4,1.0,-2,1", "392,5,1.0,2,1", "484,6,1,9,1"]
        path = write(tmp_path, HEADER + "\n".join(rows) + "\n")
        data = RespondentFile(path, [Q1])
        # -2 (no answer) is a WVS missing code: missing, not an exclusion; 7 and 0 are not options of Q1
        assert data.distribution("JPN", Q1).tolist() == [0.5, 0.5, 0.0, 0.0]
        found = {(e.country, e.column, e.reason): (e.count, e.lines) for e in data.exclusions}
        assert found == {("JPN", "Q1", "code outside 1-4"): (2, [3, 4]), ("MEX", "Q1", "code outside 1-4"): (1, [7])}

    def test_a_persona_code_without_a_label_is_counted(self, tmp_path):
        path = write(tmp_path, HEADER + "392,1,1.0,1,3\n392,2,1.0,1,2\n")
        data = RespondentFile(path, [Q1])
        assert [r.persona["sex"] for r in data.respondents("JPN")] == [None, "female"]
        [excluded] = data.exclusions
        assert (excluded.column, excluded.count, excluded.lines) == ("Q260", 1, [2])

    def test_whole_numbers_written_as_decimals_are_read(self, tmp_path):
        path = write(tmp_path, HEADER + "392.0,1,1.5,2.0,1.0\n")
        [r] = RespondentFile(path, [Q1]).respondents("JPN")
        assert r.answers == {"Q1": 2} and r.weight == 1.5 and r.persona["sex"] == "male"

    @pytest.mark.parametrize("cell,what", [
        ("abc", "'abc' is not a number"), ("Very important", "'Very important' is not a number"),
        ("nan", "'nan' is not a number"), ("inf", "'inf' is not a number"), ("1e999", "'1e999' is not a number"),
        ("2.5", "'2.5' is not a whole-number code"),
    ])
    def test_a_non_numeric_or_fractional_code_is_an_error_naming_line_and_column(self, tmp_path, cell, what):
        path = write(tmp_path, HEADER + "392,1,1.0,1,1\n" + f"392,2,1.0,{cell},1\n")
        with pytest.raises(WVSError) as exc:
            RespondentFile(path, [Q1])
        assert str(exc.value) == f"{path}: line 3: column Q1: {what}"

    def test_a_column_the_run_does_not_read_may_hold_anything(self, tmp_path):
        path = write(tmp_path, "B_COUNTRY,D_INTERVIEW,W_WEIGHT,Q1,NOTES\n392,1,1.0,1,see codebook\n")
        assert RespondentFile(path, [Q1]).respondents("JPN")[0].answers == {"Q1": 1}

    @pytest.mark.parametrize("cell", ["-1", "x", "nan", "inf", ""])
    def test_a_bad_weight_is_an_error(self, tmp_path, cell):
        path = write(tmp_path, HEADER + f"392,1,{cell},1,1\n")
        with pytest.raises(WVSError, match=r"line 2: column W_WEIGHT: .* is not a"):
            RespondentFile(path, [Q1])
        assert RespondentFile(path, [Q1], weighted=False).respondents("JPN")[0].weight == 1.0


class TestShape:
    def test_missing_item_columns_are_listed_and_the_item_has_no_survey_side(self, tmp_path):
        path = write(tmp_path, HEADER + "392,1,1.0,1,1\n")
        q2 = all_items()["Q2"]
        data = RespondentFile(path, [Q1, q2])
        assert "Q2" in data.missing_columns and "Q1" not in data.missing_columns
        assert data.distribution("JPN", q2) is None

    @pytest.mark.parametrize("row,cells", [("392,1,1.0,1\n", 4), ("392,1,1.0,1,1,5\n", 6)])
    def test_a_row_with_more_or_fewer_cells_than_the_header_is_an_error(self, tmp_path, row, cells):
        path = write(tmp_path, HEADER + "392,1,1.0,1,1\n" + row)
        with pytest.raises(WVSError) as exc:
            RespondentFile(path, [Q1])
        assert str(exc.value) == f"{path}: line 3: {cells} cells, the header has 5"

    def test_a_column_named_twice_is_an_error(self, tmp_path):
        path = write(tmp_path, "B_COUNTRY,W_WEIGHT,Q1,Q1\n392,1,1,2\n")
        with pytest.raises(WVSError, match=r"line 1: column Q1 appears twice \(columns 3 and 4\)"):
            RespondentFile(path, [Q1])

    def test_a_file_that_is_not_utf8_names_its_first_bad_line(self, tmp_path):
        path = tmp_path / "latin1.csv"
        path.write_bytes(HEADER.encode() + b"392,1,1.0,1,1\n" * 3000 + "392,9,1.0,1,1 # Espa\xf1a\n".encode("latin-1"))
        with pytest.raises(WVSError, match=r"line 3002: not UTF-8 text"):
            RespondentFile(path, [Q1])

    def test_blank_lines_are_skipped(self, tmp_path):
        path = write(tmp_path, HEADER + "392,1,1.0,1,1\n\n,,,,\n392,2,1.0,2,1\n")
        assert len(RespondentFile(path, [Q1]).respondents("JPN")) == 2


class TestRun:
    def test_exclusions_reach_the_results_and_the_console(self, tmp_path, capsys):
        rows = "392,1,1.0,1,1\n392,1,1.0,1,1\n392,2,1.0,9,2\n392,3,1.0,2,1\n"
        path = write(tmp_path, HEADER + rows)
        out = tmp_path / "res.json"
        cfg = EvalConfig(model="scripted", method="generate", countries="JPN", items="Q1", wvs_file=str(path),
                         bootstrap=10, out=str(out), plots=False)
        model = Model(ScriptedBackend(lambda messages, task: '{"answer": 1}'), "scripted")
        results = evaluate(cfg, model=model)
        survey = results["provenance"]["survey"]
        assert {(e["column"], e["count"], tuple(e["lines"])) for e in survey["exclusions"]} == {
            ("D_INTERVIEW", 1, (3,)), ("Q1", 1, (4,))}
        assert "Q260" not in survey["missing_columns"] and "X003R" in survey["missing_columns"]
        assert results["provenance"]["counts"]["JPN"]["respondents_in_file"] == 3

    def test_cli_prints_the_exclusions(self, tmp_path, capsys, monkeypatch):
        path = write(tmp_path, HEADER + "392,1,1.0,1,1\n392,1,1.0,1,1\n392,2,1.0,2,2\n")
        out = tmp_path / "res.json"
        monkeypatch.setattr("eval.wvs.run.load_model", lambda *a, **k: Model(
            ScriptedBackend(lambda messages, task: '{"answer": 2}'), "scripted"))
        main(["--model", "puppet", "--method", "generate", "--countries", "JPN", "--items", "Q1", "--wvs-file",
              str(path), "--bootstrap", "5", "--out", str(out), "--no-plots"])
        printed = capsys.readouterr().out
        assert f"left out of {path}: JPN D_INTERVIEW: 1 x row repeating an earlier row (line 3)" in printed
        assert json.loads(out.read_text())["provenance"]["survey"]["exclusions"][0]["count"] == 1

    def test_a_bad_file_stops_the_cli_with_one_line(self, tmp_path):
        path = write(tmp_path, HEADER + "392,1,1.0,x,1\n")
        with pytest.raises(SystemExit) as exc:
            main(["--model", "puppet", "--method", "generate", "--countries", "JPN", "--items", "Q1",
                  "--wvs-file", str(path), "--out", str(tmp_path / "r.json")])
        assert exc.value.code == f"error: {path}: line 2: column Q1: 'x' is not a number"
        assert not (tmp_path / "r.json").exists()

    @pytest.mark.parametrize("field,value,message", [
        ("countries", "JPN,MEX,jpn", "--countries: JPN given twice"),
        ("items", "Q1,Q2,Q1", "--items: Q1 given twice"),
    ])
    def test_a_country_or_item_given_twice_is_an_error_not_a_double_count(self, field, value, message):
        cfg = EvalConfig(**{"model": "scripted", "method": "generate", "countries": "JPN", "items": "Q1",
                            field: value})
        with pytest.raises(WVSError, match=message):
            evaluate(cfg, model=Model(ScriptedBackend(lambda m, t: '{"answer": 1}'), "scripted"))

