"""The batch table stage's inputs: its cache key, and the label stores it takes from a label stage's results."""

from __future__ import annotations

from imageops.catalog import MeasureParams
from tasks import steps
from tasks.reference import ArrayRef
from tasks.stages import PerImage, batch_table_key, label_refs


def _ref(name: str, fp: str) -> ArrayRef:
    return ArrayRef(f"/x/{name}/03_label.ome.zarr", "0", (30, 40), "uint32", (30, 40), "labels", fp)


def test_the_table_key_names_what_is_measured_from_stores_or_from_a_label_stage_s_results():
    refs = {"a": _ref("a", "f" * 16), "b": _ref("b", "e" * 16)}
    results = PerImage({name: steps.StepResult(ref, 0.1) for name, ref in refs.items()})
    params = MeasureParams(properties=["label", "area"])

    def key(params, labels=refs):
        return batch_table_key(None, {"params": params, "labels": labels, "intensity": None})

    assert key(params) == key(params, PerImage(refs)) == key(params, results)
    assert key(params) != key(MeasureParams(properties=["label", "extent"]))
    assert key(params) != key(params, {**refs, "b": refs["a"]})


def test_a_label_stage_s_results_give_the_stores_of_the_images_it_did_not_fail():
    ref = _ref("a", "f" * 16)
    results = PerImage({"a": steps.StepResult(ref, 0.1), "b": steps.ImageFailure("unreadable"),
                        "c": steps.StepResult(_ref("c", "d" * 16), 0.1)})
    assert label_refs(results) == {"a": ref, "c": _ref("c", "d" * 16)}
    assert label_refs(PerImage({"a": ref})) == {"a": ref}


def test_only_a_measure_step_of_the_labels_alone_is_chained_to_the_label_stage():
    assert steps.measures_labels_only(MeasureParams(properties=["label", "area", "centroid"]))
    assert not steps.measures_labels_only(MeasureParams(properties=["label", "intensity_mean"]))
    assert not steps.measures_labels_only(None)
