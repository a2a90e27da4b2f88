"""Atomic writes: a failed write leaves the previous file as it was and no temporary behind."""

import json

import pytest

from your_ai.files import atomic_file, write_json_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"run": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w") as handle:
            handle.write('{"run": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_successful_write_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    write_json_atomic(target, {"x": 1})
    write_json_atomic(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
