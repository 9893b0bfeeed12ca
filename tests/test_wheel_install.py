"""A built, non-editable wheel ships the bundled dataset: an install outside the repo loads the 78 dialogues."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Build from a copy of the sources: an in-tree setuptools build would write build/ and *.egg-info into the
# repository, and concurrent runs would race on them.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".hypothesis", ".cache", "runs", "tests")


@pytest.mark.slow
def test_an_installed_wheel_loads_the_bundled_tooltalk_dialogues(tmp_path):
    source, wheels, target, elsewhere = (tmp_path / name for name in ("src", "wheels", "site", "cwd"))
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
                   check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("cm2-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)

    probe = (
        "import cm2_env; from cm2_env import load_dialogues; "
        "print(cm2_env.__file__); print(len(load_dialogues('tooltalk')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, capture_output=True, text=True,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, check=True)
    module_file, count = result.stdout.split()
    assert Path(module_file).is_relative_to(target)
    assert int(count) == 78
    assert (target / "cm2_env" / "data" / "bundled" / "tooltalk" / "LICENSE").is_file()
