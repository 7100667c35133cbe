"""The run record: run.json written fast for large batches, and a flow result Prefect need not walk."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from prefect.utilities.collections import visit_collection

from flows.record import RunRecord, record_json
from tasks.stages import PerImage


def batch_record(n_images: int) -> dict:
    entry = {"kind": "array", "ref": {"store": "/out/x.ome.zarr", "shape": [8, 8], "chunks": [8, 8]},
             "seconds": 0.01, "status": "computed", "info": {"stats": {"min": 0.0, "max": 1.5}}}
    images = {f"img_{i:03d}": {**entry, "where": Path(f"/out/img_{i:03d}")} for i in range(n_images)}
    return {
        "spec": {"flow": "batch", "steps": [{"op": "gaussian", "sigma": 2.0}]},
        "status": "running",
        "stages": [
            {"step": 1, "name": "01_gaussian", "images": images, "computed_images": sorted(images)},
            {"step": 2, "name": "02_threshold", "kind": "fused", "status": "fused"},
            {"step": 3, "name": "03_label", "images": {}},
            {"step": 4, "name": "04_measure", "info": {"rows": 3}},
        ],
        "images": sorted(images),
        "name \"quoted\" haloflow-images-": "a key like the placeholders",
    }


def test_record_json_is_the_same_json_as_json_dumps():
    data = batch_record(25)
    text = record_json(data)
    assert json.loads(text) == json.loads(json.dumps(data, default=str))
    image_lines = [line for line in text.splitlines() if line.lstrip().startswith('"img_') and line.rstrip(",").endswith("}")]
    assert len(image_lines) == 25  # one line per image's entry
    assert text.startswith('{\n  "spec": {\n    "flow": "batch"')  # the rest indented as before


def test_record_json_of_a_record_without_batch_stages_is_json_dumps_indented():
    data = {"stages": [{"name": "01_gaussian", "info": {"objects": 3}}], "status": "completed"}
    assert record_json(data) == json.dumps(data, indent=2)


def test_a_finished_batch_record_hands_prefect_one_object_per_stage(tmp_path):
    record = RunRecord(str(tmp_path / "run.json"), batch_record(50))
    result = record.finish()
    images = result["stages"][0]["images"]
    assert isinstance(images, PerImage) and not isinstance(images, dict)
    assert len(images) == 50 and images["img_007"]["status"] == "computed" and "img_049" in set(images)
    assert result["stages"][2]["images"] == {}
    visited = []
    visit_collection(result, visit_fn=visited.append, return_data=False)
    plain = []
    visit_collection(json.loads((tmp_path / "run.json").read_text()), visit_fn=plain.append, return_data=False)
    assert len(plain) > 50 * 10 and len(visited) < len(plain) / 5  # the entries were not walked
    assert json.loads((tmp_path / "run.json").read_text())["stages"][0]["images"]["img_007"]["status"] == "computed"
    assert dict(pickle.loads(pickle.dumps(images))) == dict(images)  # a served run's result is pickled


def test_package_versions_are_read_once_per_process_and_given_as_a_new_dict(monkeypatch):
    from importlib import metadata

    import flows.record as record

    record._package_versions.cache_clear()
    read, version = [], metadata.version
    monkeypatch.setattr(record.metadata, "version", lambda name: read.append(name) or version(name))
    first = record.package_versions()
    first["numpy"] = "changed by a caller"
    second = record.package_versions()
    assert read == list(record.PACKAGES)  # the metadata read once, not again
    assert second["numpy"] == version("numpy") and second["python"]
    record._package_versions.cache_clear()
