"""The contract checked by the real buf (npm's @bufbuild/buf): STANDARD lint, and no breaking
change against the version of main this tree builds on.

The version compared with is the one a fresh full clone in CI can always find
and the one that matters for a merge: on a branch, the commit where it forked
from main (`git merge-base HEAD main`, or `origin/main` when there is no local
main), so only this branch's own changes are judged; on main itself, main's
previous version (HEAD's first parent), so each merge is judged. The baseline's
protos/ is read with `git archive`, which works in worktrees and never touches
the checkout. A shallow clone lacks that history: fetch it (`git fetch
--unshallow`, or `fetch-depth: 0`).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
BUF = ROOT / "node_modules" / ".bin" / "buf"

# The FILE rules about language options. A baseline without buf.yaml predates
# them: the first version that has them set them from unset, once, on purpose.
LANGUAGE_OPTION_RULES = [
    "FILE_SAME_CSHARP_NAMESPACE",
    "FILE_SAME_GO_PACKAGE",
    "FILE_SAME_JAVA_MULTIPLE_FILES",
    "FILE_SAME_JAVA_OUTER_CLASSNAME",
    "FILE_SAME_JAVA_PACKAGE",
    "FILE_SAME_OBJC_CLASS_PREFIX",
    "FILE_SAME_PHP_NAMESPACE",
    "FILE_SAME_RUBY_PACKAGE",
]


def buf(*args: str, cwd: Path = PROTOS) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail("buf is missing: run npm ci in the project's root")
    return subprocess.run(
        [str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise LookupError(done.stderr.strip())
    return done.stdout.strip()


def baseline_commit() -> str:
    """The commit of main to stay compatible with (see the module's docstring)."""
    for main in ("main", "origin/main"):
        try:
            main_commit = git("rev-parse", "--verify", "--quiet", f"{main}^{{commit}}")
            break
        except LookupError:
            continue
    else:
        pytest.fail("no main branch to compare with: git fetch origin main")
    head = git("rev-parse", "HEAD")
    fork = git("merge-base", head, main_commit)
    return git("rev-parse", f"{head}^1") if fork == head else fork


def extract_protos(commit: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "protos"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "protos"


def test_lint_standard() -> None:
    done = buf("lint")
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_breaking_change_against_main(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: there is no previous version to compare with")
    commit = baseline_commit()
    baseline = extract_protos(commit, tmp_path)
    config: list[str] = []
    if not (baseline / "buf.yaml").exists():
        rules = {"use": ["FILE"], "except": LANGUAGE_OPTION_RULES}
        config = ["--config", json.dumps({"version": "v2", "breaking": rules})]
    done = buf("breaking", ".", "--against", str(baseline), *config)
    assert done.returncode == 0, f"against {commit}:\n{done.stdout}{done.stderr}"


def test_breaking_check_catches_renumbered_and_retyped_fields(tmp_path: Path) -> None:
    changed = tmp_path / "protos"
    shutil.copytree(PROTOS, changed)
    proto = changed / "proca" / "stats" / "v1" / "stats.proto"
    text = proto.read_text()
    for old, new in [
        ("int64 supporters = 2;", "int64 supporters = 9;"),
        ("int32 min_interval_ms = 2;", "int64 min_interval_ms = 2;"),
    ]:
        assert old in text
        text = text.replace(old, new)
    proto.write_text(text)
    done = buf("breaking", ".", "--against", str(PROTOS), cwd=changed)
    assert done.returncode != 0
    assert 'field "2" with name "supporters" on message "CampaignStats" was deleted' in done.stdout
    assert 'name "min_interval_ms" on message "WatchStatsRequest" changed type' in done.stdout
