"""Result tables: atomic writes and upserts."""

import os
import stat

import pandas as pd
import pytest

from experiments.common.atomic import atomic_write, write_text_atomic
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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_usual_permissions(tmp_path, umask, mode):
    # issue 16: mkstemp alone gives 0o600, so another user of a shared results folder could not read the tables
    previous = os.umask(umask)
    try:
        write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
        write_text_atomic(tmp_path / "t.md", "text")
        with atomic_write(tmp_path / "t.bin", binary=True) as handle:
            handle.write(b"\0")
    finally:
        os.umask(previous)
    for name in ("t.csv", "t.md", "t.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
