from graphs.store import Store


def test_judgements_replace_per_judge_model_and_keep_others(tmp_path):
    store = Store(tmp_path / "s.db")
    first = [{"aspect": "quality", "label": "bad", "confidence": "very confident", "valid": 1},
             {"aspect": "meta", "label": None, "confidence": None, "raw": "???", "valid": 0}]
    store.put_judgements("ep-1", "judge-a", first)
    store.put_judgements("ep-1", "judge-b", [{"aspect": "quality", "label": "good", "valid": 1}])
    store.put_judgements("ep-1", "judge-a", [{"aspect": "quality", "label": "good", "valid": 1}])

    rows = store.judgements("ep-1")
    assert [(r["judge_model"], r["aspect"], r["label"]) for r in rows] == [
        ("judge-a", "quality", "good"), ("judge-b", "quality", "good")]
    assert store.judgements("ep-1", "judge-b")[0]["judge_model"] == "judge-b"
    assert store.judgements("ep-2") == []
