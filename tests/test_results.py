"""course_lib.results: a benchmark's JSON file, written the same way every time."""

import json

from course_lib.results import write_results


def test_results_are_written_in_order_with_a_final_newline(tmp_path, capsys):
    record = {"b": 1, "a": [1.5, None], "nested": {"z": "text"}}
    out = write_results(record, tmp_path / "new" / "bench.json")
    text = out.read_text(encoding="utf-8")
    assert text.endswith("}\n") and json.loads(text) == record
    assert list(json.loads(text)) == ["b", "a", "nested"]  # the record's own order
    assert text == json.dumps(record, indent=2) + "\n"
    assert f"wrote {out}" in capsys.readouterr().out
