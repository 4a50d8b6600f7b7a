"""Every ```python and ```bash block of README.md and docs/*.md runs, as a new user would run it.

Each block runs on its own in a fresh temporary folder holding a copy of `scenarios/` (so the
README's relative paths work), with this interpreter's `gflow`:

- a ```python block is written to a file and run by this interpreter (imports included);
- a ```bash block runs line by line: `gflow …` lines as `python -m gflow …`; `make <target>`
  lines are dry-run in the repository (`make -n`): running them would rebuild the
  environment or, for `make test`, recurse into this suite, and CI runs `make test` itself.
  Any other command is an error: a block must not depend on what this test cannot run.

A block whose info string says `reduced` (```bash reduced) runs with every scenario file
shrunk (fewer saves, steps, repetitions and sweep values), so that a paper-size sweep takes
seconds; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(python|bash)([^\n]*)\n(.*?)^```", re.M | re.S)
TIMEOUT = 600


def blocks():
    """(file, line, language, info, code) of every python and bash block."""
    out = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((path.relative_to(ROOT), line, m.group(1), m.group(2).strip(), m.group(3)))
    return out


BLOCKS = blocks()


def test_the_docs_have_blocks_to_run():
    assert any(lang == "python" for *_, lang, _, _ in BLOCKS)
    assert any(lang == "bash" for *_, lang, _, _ in BLOCKS)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return repr(v)


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml(doc: dict) -> str:
    """A scenario dict as TOML: top-level scalars, then one table per section."""
    head = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    tables = [f"\n[{k}]\n" + "\n".join(f"{_toml_key(a)} = {_toml_value(b)}" for a, b in v.items())
              for k, v in doc.items() if isinstance(v, dict)]
    return "\n".join(head) + "\n" + "\n".join(tables) + "\n"


def _shrink(doc: dict) -> dict:
    """A scenario at a size that runs in seconds: the same keys, smaller numbers."""
    flow = doc.setdefault("flow", {})
    flow["saves"] = min(int(flow.get("saves", 200)), 30)
    if "descent" in doc:
        d = doc["descent"]
        d["steps"] = [min(int(s), 200) for s in d["steps"]] if isinstance(d["steps"], list) else min(int(d["steps"]), 200)
        if "reps" in d:
            d["reps"] = [min(int(r), 2) for r in d["reps"]] if isinstance(d["reps"], list) else min(int(d["reps"]), 2)
        if "seeds" in d:
            d["seeds"] = d["seeds"][:2]
        d.pop("record_every", None)
    for key, values in doc.get("sweep", {}).items():
        doc["sweep"][key] = values[:2]
    return doc


def _workspace(tmp_path: Path, reduced: bool) -> Path:
    """A fresh folder with the repository's scenarios (shrunk when `reduced`)."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "scenarios", work / "scenarios")
    if reduced:
        for path in (work / "scenarios").rglob("*.toml"):
            path.write_text(_toml(_shrink(tomllib.loads(path.read_text(encoding="utf-8")))), encoding="utf-8")
    return work


def _env() -> dict:
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(argv, cwd: Path, where: str):
    done = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{where}: `{shlex.join(map(str, argv))}` exited {done.returncode}\n{done.stderr[-3000:]}"
    return done


def _run_bash(code: str, work: Path, where: str):
    for raw in code.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        argv = shlex.split(line)
        if argv[0] == "gflow":
            _run([sys.executable, "-m", "gflow", *argv[1:]], work, where)
        elif argv[0] == "make":
            _run(["make", "-n", *argv[1:]], ROOT, where)  # dry-run: see the module docstring
        else:
            pytest.fail(f"{where}: `{line}`: only gflow and make commands can run here")


@pytest.mark.slow
@pytest.mark.parametrize("path, line, lang, info, code", BLOCKS, ids=[f"{p}:{n}" for p, n, *_ in BLOCKS])
def test_block_runs(tmp_path, path, line, lang, info, code):
    where = f"{path}:{line}"
    unknown = set(info.split()) - {"reduced"}
    assert not unknown, f"{where}: unknown info {sorted(unknown)} (only `reduced` is understood)"
    work = _workspace(tmp_path, reduced="reduced" in info.split())
    if lang == "python":
        script = work / "block.py"
        script.write_text(code, encoding="utf-8")
        _run([sys.executable, str(script)], work, where)
    else:
        _run_bash(code, work, where)


def test_shrunk_scenarios_are_valid(tmp_path):
    """The reduced copies are scenarios gflow accepts, with the same keys."""
    from gflow import scenario

    work = _workspace(tmp_path, reduced=True)
    for path in (work / "scenarios").rglob("*.toml"):
        original = tomllib.loads((ROOT / "scenarios" / path.relative_to(work / "scenarios")).read_text())
        shrunk = tomllib.loads(path.read_text())
        assert set(original) <= set(shrunk) | {"flow"}, path
        scenario.load(path)
