"""What a flow run would import lazily, imported ahead of it (``flows.run_preload``)."""

from __future__ import annotations

import subprocess
import sys

from flows import run_preload


def test_importing_it_imports_what_a_run_would_import_on_its_way():
    """In a fresh interpreter: the flow engine's graphviz module and Pillow's PNG plugin come with it."""
    code = ("import sys, flows.run_preload as p; "
            "print(all(m in sys.modules for m in p.IMPORTED), 'prefect.utilities.visualization' in sys.modules, "
            "'PIL.PngImagePlugin' in sys.modules)")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert answer.stdout.split() == ["True", "True", "True"]


def test_a_module_this_version_lacks_is_skipped(monkeypatch):
    monkeypatch.setattr(run_preload, "LAZY_IMPORTS", ("haloflow_no_such_module", "email.policy"))
    assert run_preload._import_lazy_modules() == ["email.policy"]
