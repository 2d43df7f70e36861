"""The results recorded under benchmarks/results/ still read as today's rows: each file's rows rebuild
the row class of its benchmark and write back the same dict, and its fields are today's."""

import dataclasses
import json
from pathlib import Path

import pytest

from vitfast.bench import attention, clip_loss, model, report, window

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
FIELDS = {"attention": attention.FIELDS, "attention_module": attention.MODULE_FIELDS,
          "window_attention": window.FIELDS, "clip_loss": clip_loss.FIELDS, "model": model.FIELDS}
ROW_CLASSES = {"attention": attention.AttentionBenchRow, "attention_module": attention.AttentionBenchRow,
               "window_attention": window.WindowBenchRow, "clip_loss": clip_loss.ClipBenchRow,
               "model": model.ModelBenchRow}
# A merged GPU run (benchmarks/collect.py) holds its files under "files": each is checked as one.
DOCS = {}
for _path in sorted(RESULTS.rglob("*.json")):
    _doc = json.loads(_path.read_text())
    _name = str(_path.relative_to(RESULTS))
    if "files" in _doc:
        DOCS |= {f"{_name}:{inner}": d for inner, d in _doc["files"].items()
                 if isinstance(d, dict) and ("benchmark" in d or "lines" in d)}
    else:
        DOCS[_name] = _doc


def _row(cls, recorded: dict):
    if cls is model.ModelBenchRow:
        return cls(**recorded)
    values = dict(recorded)
    return cls(case=values.pop(cls.case_field), **values)


def test_there_are_recorded_results():
    assert {doc.get("benchmark") for doc in DOCS.values()} >= {*ROW_CLASSES, None}


@pytest.mark.parametrize("name", DOCS)
def test_a_recorded_file_reads_as_todays_rows(name):
    doc = DOCS[name]
    if "lines" in doc:  # bench all's summary.json
        assert [dataclasses.asdict(report.SummaryLine(**line)) for line in doc["lines"]] == doc["lines"]
        return
    cls = ROW_CLASSES[doc["benchmark"]]
    rows = [_row(cls, recorded) for recorded in doc["rows"]]
    assert rows and [row.as_dict() for row in rows] == doc["rows"]
    assert list(doc["fields"]) == list(FIELDS[doc["benchmark"]])
