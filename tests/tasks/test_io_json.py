"""How stage stores' ``zarr.json`` documents are read back (:func:`tasks.io._json_document`)."""

import json
import math

import pytest

from tasks import io


def test_standard_json_is_read_as_json_loads_reads_it():
    document = {"shape": [2, 3], "fill_value": 0, "attributes": {"name": "Zellkern", "scale": [0.25, 1e-7]}}
    text = json.dumps(document, indent=2).encode()
    assert io._json_document(text) == json.loads(text) == document


def test_non_finite_numbers_and_huge_integers_fall_back_to_json_loads():
    read = io._json_document(b'{"fill_value": NaN, "max": Infinity, "big": 123456789012345678901234567890}')
    assert math.isnan(read["fill_value"]) and read["max"] == math.inf
    assert read["big"] == 123456789012345678901234567890


@pytest.mark.parametrize("data", [b'{"shape": [2, 3]', b"\xff\xfe{}"])
def test_a_broken_document_names_the_file(tmp_path, data):
    store = tmp_path / "s.ome.zarr"
    store.mkdir()
    (store / "zarr.json").write_bytes(data)
    with pytest.raises(ValueError, match=r"s\.ome\.zarr/zarr\.json is not valid JSON"):
        io._group_attributes(str(store))
