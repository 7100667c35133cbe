"""tasks.steps.measure_held and the batch table stage's key: what the label stage measures in memory, and when not."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure

from imageops.catalog import LabelParams, MeasureParams
from tasks import lift, steps
from tasks.axes import ImageAxes
from tasks.ome import Calibration
from tasks.reference import ArrayRef
from tasks.stages import PerImage, batch_table_key, label_refs

UM = "micrometer"


@pytest.fixture
def labels() -> np.ndarray:
    image = np.zeros((30, 40), np.uint32)
    image[2:9, 3:12] = 1
    image[15:27, 20:24] = 2
    image[20:22, 30:39] = 3
    return image


def test_held_columns_are_the_measured_ones_with_physical_units(labels):
    params = MeasureParams(properties=["label", "area", "centroid", "bbox"])
    held = steps.measure_held(params, labels, ImageAxes(2), Calibration((0.5, 0.25), (UM, UM)))
    assert held is not None and held.measure == steps.measure_key(params)
    reference = measure.regionprops_table(labels, properties=params.properties)
    for name, column in reference.items():
        np.testing.assert_array_equal(held.columns[name], column)
    np.testing.assert_allclose(held.columns[f"area_{UM}^2"], reference["area"] * 0.125)
    np.testing.assert_allclose(held.columns[f"centroid_{UM}-0"], reference["centroid-0"] * 0.5)


def test_held_columns_without_a_calibration_have_no_physical_columns(labels):
    params = MeasureParams(properties=["label", "area"])
    held = steps.measure_held(params, labels, ImageAxes(2), Calibration.none(2))
    assert list(held.columns) == list(lift.measure_whole(labels, params))


@pytest.mark.parametrize("params, array, axes", [
    (MeasureParams(properties=["label", "intensity_mean"]), None, ImageAxes(2)),  # needs the intensity image
    (MeasureParams(properties=["label"]), "float", ImageAxes(2)),  # not labels
    (LabelParams(), None, ImageAxes(2)),  # not a measure step
    (MeasureParams(properties=["label"]), "channels", ImageAxes(3, channel=0)),  # refused by the measure stage
])
def test_what_the_measure_stage_must_do_itself_is_not_held(labels, params, array, axes):
    data = {None: labels, "float": labels.astype(np.float32), "channels": np.stack([labels, labels])}[array]
    assert steps.measure_held(params, data, axes, Calibration.none(axes.ndim)) is None


def test_the_table_key_names_what_is_measured_not_what_was_held(labels):
    refs = {name: ArrayRef(f"/x/{name}/03_label.ome.zarr", "0", (30, 40), "uint32", (30, 40), "labels", fp)
            for name, fp in (("a", "f" * 16), ("b", "e" * 16))}
    params = MeasureParams(properties=["label", "area"])
    held = steps.measure_held(params, labels, ImageAxes(2), Calibration.none(2))
    results = {"a": steps.StepResult(refs["a"], 0.1, table=held), "b": steps.StepResult(refs["b"], 0.1)}

    def key(params, labels=refs):
        return batch_table_key(None, {"params": params, "labels": labels, "intensity": None})

    assert key(params) == key(params, PerImage(refs)) == key(params, results)
    assert key(params) != key(MeasureParams(properties=["label", "extent"]))
    assert key(params) != key(params, {**refs, "b": refs["a"]})


def test_a_label_stage_s_results_give_the_stores_and_columns_of_the_images_it_did_not_fail(labels):
    ref = ArrayRef("/x/a/03_label.ome.zarr", "0", (30, 40), "uint32", (30, 40), "labels", "f" * 16)
    held = steps.measure_held(MeasureParams(properties=["label"]), labels, ImageAxes(2), Calibration.none(2))
    results = {"a": steps.StepResult(ref, 0.1, table=held), "b": steps.ImageFailure("unreadable"),
               "c": steps.StepResult(ref, 0.1)}
    assert label_refs(results) == ({"a": ref, "c": ref}, {"a": held})
    assert label_refs(PerImage({"a": ref})) == ({"a": ref}, {})
