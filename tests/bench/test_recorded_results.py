"""The results recorded under benchmarks/results/ still read as today's rows: each file's rows rebuild
the row class of its benchmark and write back the same dict, and its fields are today's."""

import dataclasses
import json
from pathlib import Path

import pytest

from vitfast.bench import attention, clip_loss, model, report, window

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
KERNELS = {"attention": attention, "window_attention": window, "clip_loss": clip_loss}
ROW_CLASSES = {"attention": attention.AttentionBenchRow, "window_attention": window.WindowBenchRow,
               "clip_loss": clip_loss.ClipBenchRow, "model": model.ModelBenchRow}
FILES = sorted(RESULTS.rglob("*.json"))


def _row(cls, recorded: dict):
    if cls is model.ModelBenchRow:
        return cls(**recorded)
    values = dict(recorded)
    return cls(case=values.pop(cls.case_field), **values)


def test_there_are_recorded_results():
    assert {json.loads(p.read_text()).get("benchmark") for p in FILES} >= {*ROW_CLASSES, None}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_a_recorded_file_reads_as_todays_rows(path):
    doc = json.loads(path.read_text())
    if "lines" in doc:  # bench all's summary.json
        assert [dataclasses.asdict(report.SummaryLine(**line)) for line in doc["lines"]] == doc["lines"]
        return
    cls = ROW_CLASSES[doc["benchmark"]]
    rows = [_row(cls, recorded) for recorded in doc["rows"]]
    assert rows and [row.as_dict() for row in rows] == doc["rows"]
    fields = KERNELS[doc["benchmark"]].FIELDS if doc["benchmark"] in KERNELS else model.FIELDS
    assert list(doc["fields"]) == list(fields)
