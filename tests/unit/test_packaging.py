"""What `pip install` puts in site-packages: one package, `widgetry`, with the top-level workers/ folder inside it as
`widgetry.workers` and the migrations beside them; an editable install (the README's) imports the same names."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from hatchling.builders.wheel import WheelBuilder

from tests.support import ROOT


def test_the_wheel_installs_only_the_widgetry_package_with_its_workers_and_migrations(tmp_path: Path) -> None:
    (wheel,) = WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"widgetry"}
    assert {"widgetry/workers/__init__.py", "widgetry/workers/jobs.py", "widgetry/migrations/env.py"} <= set(names)


def test_the_installed_package_imports_the_workers_under_its_own_name_only(tmp_path: Path) -> None:
    """Run outside the checkout, so only what the install put on the path counts."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}

    def imports(module: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - this interpreter, importing a name of the test's
            [sys.executable, "-c", f"import {module}; print({module}.__file__)"],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )

    workers = imports("widgetry.workers.jobs")
    assert workers.returncode == 0, workers.stderr
    assert Path(workers.stdout.strip()).name == "jobs.py"
    generic = imports("workers")
    assert "No module named 'workers'" in generic.stderr
