"""The package as pip builds it: with the oldest setuptools the build requirements allow, its
metadata (licence, authors, links, classifiers) and the licence text it ships."""

from __future__ import annotations

import re
import subprocess
import tomllib
import venv
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def setuptools_floor() -> str:
    """The lowest setuptools ``[build-system] requires`` allows."""
    (requirement,) = [r for r in PYPROJECT["build-system"]["requires"] if "setuptools" in r]
    found = re.fullmatch(r"setuptools>=([0-9.]+)", requirement)
    assert found, f"expected setuptools>=VERSION, got {requirement!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built without isolation by the oldest release line of setuptools allowed (its
    last fix), so that a floor set too low fails here rather than on a user's machine."""
    where = tmp_path_factory.mktemp("build")
    venv.create(where / "venv", with_pip=True)
    python = str(where / "venv" / "bin" / "python")

    def run(*args: str) -> None:
        done = subprocess.run(
            [python, "-m", "pip", "--disable-pip-version-check", "-q", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    floor = setuptools_floor()
    run("install", f"setuptools>={floor},<{int(floor.split('.')[0]) + 1}")
    run("wheel", "--no-deps", "--no-build-isolation", "-w", str(where / "dist"), str(ROOT))
    (built,) = (where / "dist").glob("proca_stats-*.whl")
    return built


def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode())


def test_the_metadata_declares_the_licence_and_where_the_project_lives(wheel: Path) -> None:
    meta = metadata(wheel)
    assert meta["License-Expression"] == "AGPL-3.0-or-later"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Author"] == "The proca-stats authors"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert urls["Source"] == "https://github.com/fixthestatusquo/proca-stats"
    assert {"Homepage", "Issues", "Documentation"} <= set(urls)
    classifiers = meta.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # the expression says it
    assert {"proca", "grpc"} <= set(meta["Keywords"].split(","))


def test_the_wheel_ships_the_agpl_text(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        text = archive.read(name).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert text.split("\n", 2)[:2] == [
        "                    GNU AFFERO GENERAL PUBLIC LICENSE",
        "                       Version 3, 19 November 2007",
    ]
    assert "13. Remote Network Interaction; Use with the GNU General Public License." in text
    assert text.rstrip().endswith("<https://www.gnu.org/licenses/>.")
