"""Editable installs (`pip install -e .`): the top-level workers/ folder is importable as `widgetry.workers`, as in
the built wheel, and not as a `workers` of its own.

Hatchling's editable mode cannot map a folder under another package (a `sources` rewrite that adds a prefix, see
the `sources` table in pyproject.toml): it puts `src/` on the path for `widgetry`, and this hook adds a finder that
resolves `widgetry.workers` to the checkout's workers/ folder.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

FINDER = '''"""`widgetry.workers` of an editable install of widgetry: the checkout's workers/ folder."""

import importlib.util
import sys

WORKERS = {workers!r}


class WorkersFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "widgetry.workers":
            return None
        return importlib.util.spec_from_file_location(
            name, WORKERS + "/__init__.py", submodule_search_locations=[WORKERS]
        )


sys.meta_path.append(WorkersFinder)
'''


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "editable":
            return
        self._generated = Path(tempfile.mkdtemp(prefix="widgetry-editable-"))
        finder = self._generated / "_widgetry_workers.py"
        finder.write_text(FINDER.format(workers=str(Path(self.root, "workers").resolve())))
        loader = self._generated / "_widgetry_workers.pth"
        loader.write_text("import _widgetry_workers\n")
        build_data["force_include_editable"][str(finder)] = finder.name
        build_data["force_include_editable"][str(loader)] = loader.name

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if version == "editable":
            shutil.rmtree(self._generated, ignore_errors=True)
