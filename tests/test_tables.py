"""Result tables: atomic writes and upserts."""

import pandas as pd
import pytest

from experiments.common.tables import read_csv, to_markdown, upsert_csv, write_csv_atomic


def test_upsert_same_key_twice_keeps_one_row(tmp_path):
    path = tmp_path / "t.csv"
    upsert_csv(path, [{"case": "a", "x": 1, "ms": 3.0}, {"case": "b", "x": 1, "ms": 4.0}], key=["case", "x"])
    table = upsert_csv(path, [{"case": "a", "x": 1, "ms": 5.0, "note": "again"}], key=["case", "x"])
    assert len(table) == 2
    again = read_csv(path)
    assert again.set_index("case").loc["a", "ms"] == 5.0
    assert again.set_index("case").loc["a", "note"] == "again"
    assert again.set_index("case").loc["b", "ms"] == 4.0
    assert "| case" in to_markdown(again)


def test_upsert_needs_key_columns(tmp_path):
    with pytest.raises(ValueError, match="key column"):
        upsert_csv(tmp_path / "t.csv", [{"case": "a"}], key=["case", "x"])


def test_failed_write_leaves_old_table(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    write_csv_atomic(pd.DataFrame({"a": [1]}), path)

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(KeyboardInterrupt):
        write_csv_atomic(pd.DataFrame({"a": [2]}), path)
    monkeypatch.undo()
    assert read_csv(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
