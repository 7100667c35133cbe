"""A batch image stage runs several kept steps in a row on each image, handing each result on from memory.

Each store must equal (data, fingerprint) what the steps give run one stage
at a time, each reading the previous store; the later steps must not read
back what was just written; a step not kept between two kept ones is fused
on the held result; an image whose step fails stops there, its earlier
stores kept, and the other images go on. A measure step of the labels alone
is measured in the same call, from the labels in memory, and equals what
the table stage measures from the stores.
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
    assert chain.table is None
    table = StepResult(None, 0.5, info={"rows": 3})
    measured = pickle.loads(pickle.dumps(chain.with_table(table)))
    assert measured.table == table and dict(measured) == dict(chain) and measured.names == chain.names


LINKS = [Link(GAUSSIAN, NAMES[0]), Link(LABEL, NAMES[2], fused=((OTSU, NAMES[1]),))]


def test_the_labels_are_measured_from_memory_as_the_table_stage_measures_their_store(tmp_path, source, monkeypatch):
    stores = [str(tmp_path / f"{name}.ome.zarr") for name in (NAMES[0], NAMES[2])]
    with monkeypatch.context() as patched:
        _never_read_back(patched)
        results, (columns, seconds) = stages._run_links(LINKS, source, stores, None, MEASURE)
    labels = results[-1].ref
    from_store = steps.measure_columns(MEASURE, labels, compute=steps.local_compute, whole=True)
    assert list(columns) == list(from_store) and seconds > 0
    for name, column in from_store.items():
        np.testing.assert_array_equal(columns[name], column, err_msg=name)
    reference = measure.regionprops_table(_stored(labels), properties=MEASURE.properties)
    assert len(reference["label"]) > 3
    for name, column in reference.items():
        np.testing.assert_array_equal(columns[name], column, err_msg=name)

    # Labels stored by an earlier run are not in memory: they are measured from their store.
    again, (from_complete, _) = stages._run_links(LINKS, source, stores, None, MEASURE)
    assert [r.status for r in again] == ["cached", "cached"]
    for name, column in from_store.items():
        np.testing.assert_array_equal(from_complete[name], column, err_msg=name)


def test_an_image_whose_steps_fail_is_not_measured(tmp_path, source):
    no_channel = ChannelParams(op="channel", index=2)
    links = [Link(GAUSSIAN, NAMES[0]), Link(no_channel, "02_channel")]
    stores = [str(tmp_path / f"{name}.ome.zarr") for name in (NAMES[0], "02_channel")]
    results, measured = stages._run_links(links, source, stores, None, MEASURE)
    assert isinstance(results[-1], ImageFailure) and measured is None


@pytest.fixture
def three_images(tmp_path):
    sources = {}
    for seed, stem in enumerate(("a", "b", "c")):
        path = tmp_path / "images" / f"{stem}.tif"
        path.parent.mkdir(exist_ok=True)
        tifffile.imwrite(path, demo_volume((40 + 3 * seed, 52), n_objects=7, seed=seed))
        sources[stem] = io.resolve_input(str(path))
    return sources


def _stage_stores(folder, sources) -> tuple:
    return tuple(stages.PerImage({stem: str(folder / stem / f"{name}.ome.zarr") for stem in sources})
                 for name in (NAMES[0], NAMES[2]))


def test_a_label_stage_that_measures_writes_the_table_the_table_stage_writes(tmp_path, three_images):
    out = tmp_path / "out"
    chain = stages.batch_image_stage.fn(LINKS, stages.PerImage(three_images), _stage_stores(out, three_images),
                                        "labels", None, MEASURE, str(out / "04_measure.csv"))
    separate = stages.batch_table_stage.fn(MEASURE, chain, str(tmp_path / "separate.csv"), "04_measure")

    assert chain.table.ref.fingerprint == separate.ref.fingerprint and chain.table.info == separate.info == {"rows": separate.ref.rows}
    ours, theirs = io.read_table(out / "04_measure.csv"), io.read_table(tmp_path / "separate.csv")
    assert list(ours) == list(theirs) == ["image", "label", "area", "centroid-0", "centroid-1",
                                          "bbox-0", "bbox-1", "bbox-2", "bbox-3"]
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert sorted(set(ours["image"])) == ["a", "b", "c"]
    labels = [ref.fingerprint for ref in stages.label_refs(chain).values()]
    assert io.table_is_complete(out / "04_measure.csv", stages.joined_table_fingerprint(MEASURE, labels))
    assert not io.table_is_complete(out / "04_measure.csv", stages.joined_table_fingerprint(MEASURE, labels[::-1]))


def test_an_image_whose_measuring_fails_is_named_and_the_table_not_marked_complete(tmp_path, three_images, monkeypatch):
    measure_columns = steps.measure_columns

    def fails_for_b(params, labels, **kwargs):
        if "/b/" in labels.store:
            raise ValueError("the labels of b cannot be measured")
        return measure_columns(params, labels, **kwargs)

    monkeypatch.setattr(steps, "measure_columns", fails_for_b)
    out = tmp_path / "out"
    table = out / "04_measure.csv"
    chain = stages.batch_image_stage.fn(LINKS, stages.PerImage(three_images), _stage_stores(out, three_images),
                                        "labels", None, MEASURE, str(table))
    assert chain.table.info["failed"] == {"b": "the labels of b cannot be measured"}
    assert sorted(set(io.read_table(table)["image"])) == ["a", "c"]
    assert not io.table_is_complete(table)


def test_the_measure_step_and_its_table_come_together(tmp_path, three_images):
    with pytest.raises(ValueError, match="measure step and its table"):
        stages.batch_image_stage.fn(LINKS, stages.PerImage(three_images), _stage_stores(tmp_path, three_images),
                                    "labels", None, MEASURE, None)


def test_the_stage_key_names_the_measure_step_and_its_table(three_images):
    def key(measure=None, table=None):
        return stages.batch_stage_key(None, {"links": LINKS, "upstreams": three_images, "measure": measure, "table": table})

    assert key() == stages.batch_stage_key(None, {"links": LINKS, "upstreams": three_images})
    measured = key(MEASURE, "/o/04_measure.csv")
    assert measured != key()
    assert measured != key(MeasureParams(op="measure", properties=["label", "area"]), "/o/04_measure.csv")
    assert measured != key(MEASURE, "/p/04_measure.csv")
    assert measured == key(MEASURE.model_copy(update={"name": "sizes"}), "/o/04_measure.csv")

