"""``haloflow ops``: every registered op from the registry, and the README's op table kept equal to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main as cli_main
from flows.opsdoc import END, START, ops_reference, read_block, replace_block
from imageops import OPS

README = Path(__file__).resolve().parents[2] / "README.md"


def run_ops(capsys, *args: str) -> str:
    assert cli_main(["ops", *args]) == 0
    return capsys.readouterr().out


def test_ops_lists_every_registered_op_with_its_parameters(capsys):
    entries = [entry.splitlines() for entry in run_ops(capsys).strip().split("\n\n")]
    assert [lines[0].split(":", 1)[0] for lines in entries] == list(OPS)
    for lines, (name, info) in zip(entries, OPS.items()):
        assert lines[0].startswith(f"{name}: {' or '.join(info.takes)} -> {info.gives}. ")
        parameters = [line.strip().split(":", 1)[0] for line in lines[1:]]
        assert parameters == [field for field in info.params.model_fields if field != "op"]
    gaussian = entries[list(OPS).index("gaussian")]
    assert "  sigma: float in (0, 1000], required. Standard deviation of the kernel, in voxels." in gaussian
    assert "  truncate: float in (0, 100], default 4.0. Kernel radius in standard deviations." in gaussian


def test_ops_markdown_is_one_table_row_per_op(capsys):
    out = run_ops(capsys, "--markdown")
    assert out == ops_reference(markdown=True)
    rows = out.splitlines()
    assert rows[:2] == ["| op | takes | gives | parameters | description |", "| --- | --- | --- | --- | --- |"]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows[2:]] == [f"`{name}`" for name in OPS]
    measure_row = rows[2 + list(OPS).index("measure")]
    for prop in ("intensity_std", "equivalent_diameter_area", "extent"):
        assert f'"{prop}"' in measure_row
    assert '`intensity`: str or list of str or null, default "input"' in measure_row


def test_readme_op_table_is_the_generated_one():
    block = read_block(README.read_text())
    assert block == ops_reference(markdown=True), (
        "README.md's op table is stale: regenerate it with `python -m flows.opsdoc README.md`"
    )


def test_readme_spec_table_is_the_generated_one_and_lists_every_field():
    from flows.opsdoc import SPEC_END, SPEC_START, spec_reference
    from flows.spec import PipelineSpec

    block = read_block(README.read_text(), SPEC_START, SPEC_END)
    assert block == spec_reference(), "README.md's spec table is stale: regenerate it with `python -m flows.opsdoc README.md`"
    rows = block.splitlines()[2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [f"`{name}`" for name in PipelineSpec.model_fields]
    assert "list of int > 0 or null, default null" in rows[list(PipelineSpec.model_fields).index("chunks")]


def test_replace_block_keeps_the_text_around_the_markers():
    text = f"# title\n\n{START}\nold table\n{END}\n\nafter\n"
    assert replace_block(text, "new\n") == f"# title\n\n{START}\nnew\n{END}\n\nafter\n"
    assert read_block(replace_block(text, "new\n")) == "new\n"
    with pytest.raises(ValueError, match="must hold one"):
        replace_block("no markers here", "new\n")


def test_opsdoc_main_rewrites_the_block_of_a_markdown_file(tmp_path):
    from flows.opsdoc import main

    page = tmp_path / "page.md"
    page.write_text(f"intro\n{START}\nstale\n{END}\n")
    assert main([str(page)]) == 0
    assert page.read_text() == f"intro\n{START}\n{ops_reference(markdown=True)}{END}\n"
