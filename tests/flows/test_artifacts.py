"""Every stage is inspectable in the Prefect UI: table, picture, link and progress artifacts."""

from __future__ import annotations


import httpx
import pytest
import tifffile

from flows.demo import demo_volume
from tests.browser import SCREENSHOTS, chromium

pytestmark = pytest.mark.slow

#: Screenshots kept as test artifacts (ignored by git).

STEPS = [
    {"op": "gaussian", "sigma": 1.0},
    {"op": "threshold"},
    {"op": "label"},
    {"op": "measure", "properties": ["label", "area", "centroid"], "intensity": None},
]


def run_artifact(api_url: str, run_id: str, key: str) -> dict:
    """The artifact with `key` that flow run `run_id` made (other runs, even at the same time, make their own)."""
    query = {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [run_id]}}, "sort": "CREATED_DESC", "limit": 1}
    response = httpx.post(f"{api_url}/artifacts/filter", json=query)
    response.raise_for_status()
    found = response.json()
    assert found, f"no artifact with key {key!r} from flow run {run_id}"
    return found[0]


def table_fields(artifact: dict) -> dict[str, str]:
    import json

    data = artifact["data"]
    rows = json.loads(data) if isinstance(data, str) else data
    return {row["field"]: row["value"] for row in rows}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, dask_cluster):
    from flows import large_image_flow
    from flows.runner import make_task_runner

    folder = tmp_path_factory.mktemp("artifacts")
    tifffile.imwrite(folder / "v.tif", demo_volume((16, 64, 48), n_objects=20, seed=3))
    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    state = flow(input=str(folder / "v.tif"), steps=STEPS, output=str(folder / "out"), chunks=[8, 32, 24], return_state=True)
    return folder / "out", state.result(), str(state.state_details.flow_run_id)


def test_each_stage_has_its_table_picture_link_and_progress(finished_run, prefect_api_url):
    out, result, run_id = finished_run

    def latest_artifact(api_url: str, key: str) -> dict:
        return run_artifact(api_url, run_id, key)

    objects = result["stages"][2]["info"]["objects"]
    label = table_fields(latest_artifact(prefect_api_url, "large-image-03-label"))
    assert label["shape"] == "(16, 64, 48)" and label["dtype"] == "uint32" and label["chunks"] == "(8, 32, 24)"
    assert label["objects"] == str(objects) and label["status"] == "computed"
    assert label["store"] == str(out / "03_label.ome.zarr")
    assert float(label["max"]) == objects and float(label["min"]) == 0
    assert label["blocks written / reused / total"] == "8 / 0 / 8"
    gaussian = table_fields(latest_artifact(prefect_api_url, "large-image-01-gaussian"))
    assert float(gaussian["min"]) < float(gaussian["mean"]) < float(gaussian["max"])
    for key in ("large-image-01-gaussian", "large-image-02-threshold", "large-image-03-label"):
        picture = latest_artifact(prefect_api_url, f"{key}-picture")
        assert picture["type"] == "markdown" and "data:image/png;base64," in picture["data"]
        progress = latest_artifact(prefect_api_url, f"{key}-progress")
        assert progress["type"] == "progress" and float(progress["data"]) == 100.0
        link = latest_artifact(prefect_api_url, f"{key}-store")
        assert link["type"] == "markdown" and "file://" in link["data"]
    measure = table_fields(latest_artifact(prefect_api_url, "large-image-04-measure"))
    assert measure["rows"] == str(objects)


def test_a_run_served_from_its_stores_still_gets_each_stages_artifacts(finished_run, prefect_api_url, dask_cluster):
    """A second run over the same output reuses every stage; the flow still publishes their tables and pictures."""
    from flows import large_image_flow
    from flows.runner import make_task_runner

    out = finished_run[0]
    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    state = flow(input=str(out.parent / "v.tif"), steps=STEPS, output=str(out), chunks=[8, 32, 24], return_state=True)
    again = str(state.state_details.flow_run_id)
    assert [stage["status"] for stage in state.result()["stages"]] == ["cached"] * 4
    task_runs = stage_task_runs(prefect_api_url, again)
    label = run_artifact(prefect_api_url, again, "large-image-03-label")
    assert table_fields(label)["status"] == "cached" and label["task_run_id"] == task_runs["03_label"]
    picture = run_artifact(prefect_api_url, again, "large-image-03-label-picture")
    assert "data:image/png;base64," in picture["data"]


def stage_task_runs(api_url: str, run_id: str) -> dict[str, str]:
    """The flow run's task runs, by name (the stage key): name -> id."""
    query = {"task_runs": {"flow_run_id": {"any_": [run_id]}}}
    response = httpx.post(f"{api_url}/task_runs/filter", json=query)
    response.raise_for_status()
    return {run["name"]: run["id"] for run in response.json()}


def test_artifacts_published_by_the_flow_belong_to_their_stage_task_run(finished_run, prefect_api_url):
    """The flow publishes a stage's table, picture and link once the stage returns; they stay the stage's."""
    _, _, run_id = finished_run
    task_runs = stage_task_runs(prefect_api_url, run_id)
    for stage in ("01_gaussian", "02_threshold", "03_label", "04_measure"):
        key = "large-image-" + stage.replace("_", "-")
        suffixes = ("", "-store") if stage == "04_measure" else ("", "-picture", "-store", "-progress")
        for suffix in suffixes:
            artifact = run_artifact(prefect_api_url, run_id, key + suffix)
            assert artifact["task_run_id"] == task_runs[stage], f"{key}{suffix} is not {stage}'s"


def test_stage_picture_renders_in_the_prefect_ui(finished_run, prefect_api_url, prefect_server, tmp_path):
    if prefect_server is None:
        pytest.skip("the session uses an external Prefect API; its UI is not ours to drive")
    artifact = run_artifact(prefect_api_url, finished_run[2], "large-image-03-label-picture")
    page_url = f"{prefect_server.url}/artifacts/artifact/{artifact['id']}"
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(page_url)
        image = page.locator("img[src^='data:image/png']").first
        image.wait_for(state="visible", timeout=60_000)
        width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
        page.screenshot(path=str(SCREENSHOTS / "artifact-label-picture.png"), full_page=True)
    assert width > 0, "the picture did not decode in the browser"


def test_a_progress_artifact_made_in_the_background_is_waited_for_and_its_errors_raised(monkeypatch):
    import contextvars

    from tasks import artifacts

    made, updates, marker = [], [], contextvars.ContextVar("marker", default="none")

    def create(progress, key, description):
        made.append((key, marker.get()))  # made in another thread, in the caller's context
        return "artifact-id"

    monkeypatch.setattr(artifacts, "create_progress_artifact", create)
    monkeypatch.setattr(artifacts, "update_progress_artifact", lambda artifact, percent: updates.append((artifact, percent)))
    marker.set("the stage's task run")
    with artifacts.Progress("stage", "blocks written") as progress:
        progress(2, 2)
    assert made == [("stage-progress", "the stage's task run")] and updates == [("artifact-id", 100.0)]

    def fail(progress, key, description):
        raise RuntimeError("the API refused the artifact")

    monkeypatch.setattr(artifacts, "create_progress_artifact", fail)
    with pytest.raises(RuntimeError, match="refused"):
        with artifacts.Progress("stage", "blocks written"):
            pass  # a stage with nothing to write (a cached store) still learns of it
    with pytest.raises(RuntimeError, match="refused"):
        artifacts.Progress("stage", "blocks written")(1, 4)
