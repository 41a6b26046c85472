"""dvc.yaml lists, for each stage, exactly the code it runs: the genlab modules `genlab.stages.<stage>` imports,
directly or through other genlab modules. A missing one would let `dvc repro` keep outputs made by old code; an
extra one would re-run a stage for a change that cannot touch it. And each training stage lists every key of its
params section that training reads, so that `dvc exp run -S <section>.<key>=...` re-runs it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from genlab.config import SAMPLING_KEYS, TRAINING_SECTIONS, Params
from tests.conftest import BIN, hermetic_env, sh

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# code a stage runs without importing it: the registered model ships serving.py (tracking.SERVING_CODE)
EXTRA = {"evaluate": {"src/genlab/serving.py"}}


def module_file(name: str) -> Path | None:
    p = SRC.joinpath(*name.split("."))
    return p / "__init__.py" if (p / "__init__.py").is_file() else p.with_suffix(".py") if p.with_suffix(
        ".py").is_file() else None


def genlab_imports(path: Path) -> set[str]:
    """Modules (and packages) of genlab that `path` imports, at any depth of its syntax tree."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    # importing genlab.a.b runs genlab/__init__.py and genlab/a/__init__.py too
    parents = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
    return {n for n in names | parents if n.startswith("genlab") and module_file(n)}


def import_closure(module: str) -> set[str]:
    """Every genlab source file that importing `module` executes, relative to the project root."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += genlab_imports(module_file(name))
    return {str(module_file(n).relative_to(ROOT)) for n in seen}


def covered(deps: list[str]) -> set[str]:
    """The Python files under src/ that a stage's dependency paths (files or directories) cover."""
    out: set[str] = set()
    for d in deps:
        p = ROOT / d
        if d.startswith("src/"):
            out |= {str(f.relative_to(ROOT)) for f in ([p] if p.is_file() else p.rglob("*.py"))}
    return out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_code_deps_are_its_import_closure(stage: str) -> None:
    deps = STAGES[stage]["deps"]
    assert all((ROOT / d).exists() for d in deps if d.startswith("src/")), "a code dependency that does not exist"
    module = STAGES[stage]["cmd"].split()[1]  # `genlab <module> [args]`: sample_ldm runs `genlab sample ldm`
    want, have = import_closure(f"genlab.stages.{module}") | EXTRA.get(stage, set()), covered(deps)
    assert have == want, f"{stage}: missing {sorted(want - have)}, extra {sorted(have - want)}"


def test_closure_follows_imports_inside_functions() -> None:
    """A reference value: train_ldm reaches the text encoder only through an import inside a method."""
    closure = import_closure("genlab.stages.train_ldm")
    assert "src/genlab/models/text.py" in closure and "src/genlab/stages/diffusion_training.py" in closure
    assert "src/genlab/cli.py" not in closure and "src/genlab/__init__.py" in closure


def test_bytecode_caches_are_not_code_dependencies(tmp_path: Path) -> None:
    """An import writes __pycache__ next to the code; under a directory dependency (src/genlab/metrics) that would
    change its hash and re-run every stage after the first `import`. .dvcignore keeps them out of every hash."""
    caches = ["src/genlab/metrics/__pycache__/fid.cpython-311.pyc", "src/genlab/__pycache__/cli.cpython-312.pyc"]
    out = sh([str(BIN / "dvc"), "check-ignore", *caches, "src/genlab/metrics/fid.py"], ROOT, hermetic_env(tmp_path),
             check=False)
    assert out.stdout.split() == caches, out.stdout + out.stderr


@pytest.mark.parametrize("section", TRAINING_SECTIONS)
def test_training_stage_lists_every_key_its_training_reads(section: str) -> None:
    """`ldm.precision` was read by `train_ldm` (`Params.compute_for`) but not listed: `dvc exp run -S
    ldm.precision=bf16` changed nothing. Every key of the section but the sampling ones must be listed (or the
    whole section)."""
    listed = {p for p in STAGES[f"train_{section}"]["params"] if isinstance(p, str)}
    keys = set(type(getattr(Params(), section)).model_fields) - set(SAMPLING_KEYS)
    missing = sorted(k for k in keys if section not in listed and f"{section}.{k}" not in listed)
    assert not missing, f"train_{section}: dvc.yaml does not list {missing}"
    assert not {f"{section}.{k}" for k in SAMPLING_KEYS} & listed  # a sampling change re-samples, not re-trains
