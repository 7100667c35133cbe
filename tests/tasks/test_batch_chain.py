"""A batch image stage runs several kept steps in a row on each image, handing each result on from memory.

Each store must equal (data, fingerprint) what the steps give run one stage
at a time, each reading the previous store; the later steps must not read
back what was just written; a step not kept between two kept ones is fused
on the held result; an image whose step fails stops there, its earlier
stores kept, and the other images go on. Labels measured where they are made,
for a measure step that reads only them, must give the table their store
gives, and the table stage must take those tables and measure only the rest.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile
import zarr
from skimage import filters, measure

from flows.demo import demo_volume
from imageops.catalog import ChannelParams, GaussianParams, LabelParams, MeasureParams, ThresholdParams
from tasks import io, stages, steps
from tasks.steps import ImageFailure, Link, StepResult

GAUSSIAN = GaussianParams(op="gaussian", sigma=1.5)
OTSU = ThresholdParams(op="threshold", method="otsu")
LABEL = LabelParams(op="label", connectivity=1)
MEASURE = MeasureParams(op="measure", properties=["label", "area", "centroid", "bbox"])
NAMES = ["01_gaussian", "02_threshold", "03_label"]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "field.tif"
    tifffile.imwrite(path, demo_volume((57, 46), n_objects=9, seed=3))
    return io.resolve_input(str(path))


def _stored(ref) -> np.ndarray:
    return zarr.open_array(ref.store, path="0", mode="r")[...]


def _one_stage_at_a_time(source, folder) -> list[StepResult]:
    """The three steps as three stages would run them: each reads the store the previous one wrote."""
    upstream, results = source, []
    for params, name in zip([GAUSSIAN, OTSU, LABEL], NAMES):
        results.append(steps.run_whole_image_step(params, upstream, str(folder / f"{name}.ome.zarr"), name=name))
        upstream = results[-1].ref
    return results


def _never_read_back(monkeypatch):
    def refuse(ref):
        raise AssertionError(f"{ref.store} was read back")

    monkeypatch.setattr(io, "read_ref_whole", refuse)


def test_kept_steps_in_a_row_equal_one_stage_at_a_time_without_reading_back(tmp_path, source, monkeypatch):
    separate = _one_stage_at_a_time(source, tmp_path / "separate")
    _never_read_back(monkeypatch)
    links = [Link(GAUSSIAN, NAMES[0]), Link(OTSU, NAMES[1]), Link(LABEL, NAMES[2])]
    stores = [str(tmp_path / "chained" / f"{name}.ome.zarr") for name in NAMES]
    chained = stages._run_links(links, source, stores, None)[0]

    assert [type(r) for r in chained] == [StepResult] * 3
    assert [r.fingerprint for r in chained] == [r.fingerprint for r in separate]
    assert stages.chain_fingerprints(links, source) == [r.fingerprint for r in separate]
    for mine, theirs in zip(chained, separate):
        np.testing.assert_array_equal(_stored(mine.ref), _stored(theirs.ref))
        assert io.is_complete(mine.ref.store, mine.fingerprint)
        assert mine.info["stats"] == theirs.info["stats"]
    # and against scikit-image on the whole image
    blurred = filters.gaussian(tifffile.imread(source.paths[0]).astype(np.float32), sigma=1.5, preserve_range=True)
    expected = measure.label(blurred > filters.threshold_otsu(blurred), connectivity=1)
    np.testing.assert_array_equal(_stored(chained[2].ref), expected)


def test_a_step_not_kept_between_two_kept_ones_is_fused_on_the_held_result(tmp_path, source, monkeypatch):
    separate = _one_stage_at_a_time(source, tmp_path / "separate")
    _never_read_back(monkeypatch)
    links = [Link(GAUSSIAN, NAMES[0]), Link(LABEL, NAMES[2], fused=((OTSU, NAMES[1]),))]
    stores = [str(tmp_path / "kept" / f"{name}.ome.zarr") for name in (NAMES[0], NAMES[2])]
    gaussian, labels = stages._run_links(links, source, stores, None)[0]

    assert not (tmp_path / "kept" / f"{NAMES[1]}.ome.zarr").exists()
    assert labels.fingerprint == separate[2].fingerprint  # the store a run keeping all would have
    assert stages.chain_fingerprints(links, source)[-1] == separate[2].fingerprint
    np.testing.assert_array_equal(_stored(labels.ref), _stored(separate[2].ref))
    assert labels.info["fused"][NAMES[1]]["threshold"] == separate[1].info["threshold"]


def test_complete_stores_are_reused_and_the_next_step_reads_them(tmp_path, source):
    links = [Link(GAUSSIAN, NAMES[0]), Link(OTSU, NAMES[1]), Link(LABEL, NAMES[2])]
    stores = [str(tmp_path / f"{name}.ome.zarr") for name in NAMES]
    first = stages._run_links(links, source, stores, None)[0]
    (tmp_path / f"{NAMES[2]}.ome.zarr" / "zarr.json").unlink()  # the last store left unfinished
    again = stages._run_links(links, source, stores, None)[0]
    assert [r.status for r in again] == ["cached", "cached", "computed"]
    np.testing.assert_array_equal(_stored(again[2].ref), _stored(first[2].ref))


def test_a_failing_step_ends_that_image_s_run_and_keeps_what_it_wrote(tmp_path, source):
    no_channel = ChannelParams(op="channel", index=2)  # the image has no channel axis
    links = [Link(GAUSSIAN, NAMES[0]), Link(no_channel, "02_channel"), Link(LABEL, "03_label")]
    stores = [str(tmp_path / f"{name}.ome.zarr") for name in (NAMES[0], "02_channel", "03_label")]
    results = stages._run_links(links, source, stores, None)[0]

    assert [type(r) for r in results] == [StepResult, ImageFailure]
    assert "channel" in results[1].error
    assert io.is_complete(results[0].ref.store, results[0].fingerprint)
    assert not (tmp_path / "03_label.ome.zarr").exists()


def test_chain_results_read_as_the_last_step_and_give_each_step_s():
    done = [StepResult(None, 0.1), StepResult(None, 0.2)]
    failed = [StepResult(None, 0.3), ImageFailure("no")]
    chain = stages.ChainResults(["01_a", "02_b"], {"done": done, "failed": failed})

    assert dict(chain) == {"done": done[1], "failed": failed[1]}
    assert chain.step("01_a") == {"done": done[0], "failed": failed[0]}
    assert chain.step("02_b") == {"done": done[1], "failed": failed[1]}
    only_first = stages.ChainResults(["01_a", "02_b"], {"early": [ImageFailure("bad input")]})
    assert only_first.step("02_b") == {} and only_first.step("01_a") == {"early": ImageFailure("bad input")}
    copy = pickle.loads(pickle.dumps(chain))  # Prefect persists the stage's result
    assert copy.names == chain.names and dict(copy) == dict(chain) and copy.step("01_a") == chain.step("01_a")



def _labels_links_and_stores(folder):
    links = [Link(GAUSSIAN, NAMES[0]), Link(LABEL, NAMES[2], fused=((OTSU, NAMES[1]),))]
    return links, [str(folder / f"{name}.ome.zarr") for name in (NAMES[0], NAMES[2])]


def _measured_from_store(ref) -> dict:
    return steps.measure_columns(MEASURE, ref, whole=True, compute=steps.local_compute)


def test_labels_measured_where_they_are_made_give_their_store_s_table_without_reading_it_back(
    tmp_path, source, monkeypatch
):
    links, stores = _labels_links_and_stores(tmp_path)
    _never_read_back(monkeypatch)
    results, table = stages._run_links(links, source, stores, None, MEASURE)
    monkeypatch.undo()

    assert [r.status for r in results] == ["computed", "computed"]
    from_store = _measured_from_store(results[-1].ref)
    assert list(table) == list(from_store)
    for name, column in from_store.items():
        np.testing.assert_array_equal(table[name], column, err_msg=name)
    reference = measure.regionprops_table(_stored(results[-1].ref), properties=MEASURE.properties)
    assert len(reference["label"]) > 3
    for name, column in reference.items():
        np.testing.assert_array_equal(table[name], column, err_msg=name)


def test_labels_already_stored_or_not_measurable_in_memory_are_left_to_the_table_stage(tmp_path, source, monkeypatch):
    links, stores = _labels_links_and_stores(tmp_path)
    stages._run_links(links, source, stores, None)
    results, table = stages._run_links(links, source, stores, None, MEASURE)
    assert [r.status for r in results] == ["cached", "cached"] and table is None  # nothing held: read by the table stage

    def fails(*args, **kwargs):
        raise ValueError("cannot measure these")

    monkeypatch.setattr(steps.lift, "measure_whole", fails)
    links, stores = _labels_links_and_stores(tmp_path / "other")
    results, table = stages._run_links(links, source, stores, None, MEASURE)
    assert [r.status for r in results] == ["computed", "computed"] and table is None


def test_the_table_stage_takes_the_tables_measured_for_its_step_and_measures_only_the_rest(
    tmp_path, source, monkeypatch
):
    links, _ = _labels_links_and_stores(tmp_path)
    stores = [{image: str(tmp_path / image / f"{name}.ome.zarr") for image in ("a", "b")}
              for name in (NAMES[0], NAMES[2])]
    stages._run_links(links, source, [stores[0]["b"], stores[1]["b"]], None)  # b's labels stored already
    chain = stages.batch_image_stage.fn(links, {"a": source, "b": source}, stores, "labels", None, MEASURE)
    assert set(chain.tables_for(MEASURE)) == {"a"}
    assert chain.tables_for(MEASURE.model_copy(update={"name": "renamed"})).keys() == {"a"}  # the name is not the step
    other_step = MeasureParams(op="measure", properties=["label", "area"])
    assert chain.tables_for(other_step) == {}
    assert pickle.loads(pickle.dumps(chain)).tables_for(MEASURE).keys() == {"a"}  # as Prefect persists it

    measured_here = []
    measure_columns = steps.measure_columns

    def counted(params, ref, **kwargs):
        measured_here.append(ref.store)
        return measure_columns(params, ref, **kwargs)

    monkeypatch.setattr(steps, "measure_columns", counted)
    taken = stages.batch_table_stage.fn(MEASURE, chain, str(tmp_path / "taken.csv"), "04_measure")
    assert measured_here == [stores[1]["b"]]
    measured_here.clear()
    again = stages.batch_table_stage.fn(MEASURE, stages.label_refs(chain), str(tmp_path / "again.csv"), "04_measure")
    assert sorted(measured_here) == sorted(stores[1].values())
    assert taken.ref.rows == again.ref.rows and taken.ref.fingerprint == again.ref.fingerprint
    mine, theirs = io.read_table(tmp_path / "taken.csv"), io.read_table(tmp_path / "again.csv")
    assert list(mine) == list(theirs)
    for name in theirs:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)


def test_a_batch_stage_that_measures_is_cached_apart_for_each_measure_step(source):
    links = [Link(GAUSSIAN, NAMES[0]), Link(LABEL, NAMES[2], fused=((OTSU, NAMES[1]),))]
    base = {"links": links, "upstreams": {"a": source}}
    keys = [stages.batch_stage_key(None, {**base, **extra}) for extra in (
        {}, {"measure": None}, {"measure": MEASURE}, {"measure": MEASURE.model_copy(update={"name": "renamed"})},
        {"measure": MeasureParams(op="measure", properties=["label", "area"])},
    )]
    assert keys[0] == keys[1] and keys[2] == keys[3]
    assert len({keys[0], keys[2], keys[4]}) == 3
