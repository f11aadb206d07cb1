"""Imports flow one way: models <- artifacts, metrics <- training, analysis, export, engine <- verify
<- serving, bench, CLIs. Every import is counted, also those inside functions."""

import ast
from pathlib import Path

import lsmha

ROOT = Path(lsmha.__file__).parent

# layer of each top-level part of lsmha; a module may import its own part and lower layers only
LAYERS: dict[str, int] = {
    "models": 0,
    "cli_help": 0,
    "lazy": 0,
    "tables": 1,  # human tables, and --json files through artifacts' one JSON writer
    "version": 0,
    "metrics": 1,
    "artifacts": 1,
    "training": 2,
    "analysis": 2,
    "export": 2,
    "engine": 2,
    "verify": 3,
    "serving": 4,
    "bench": 5,
    "cli": 6,  # every command-line module (`*cli.py`), and the package's public face
}
# parts of one layer that must not see each other (each builds or runs on its own)
SIBLINGS_APART = {"training", "analysis", "export", "engine"}


def part_of(module: str) -> str:
    """The layer key of a dotted module name inside lsmha ("lsmha.export.onnx" -> "export")."""
    parts = module.split(".")
    if parts == ["lsmha"] or parts[-1].endswith("cli"):
        return "cli"
    return parts[1].removesuffix("_cli")


def is_module(name: str, root: Path) -> bool:
    rel = root.joinpath(*name.split(".")[1:])
    return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()


def imports_of(path: Path, root: Path, package: str = "lsmha") -> set[str]:
    """Every lsmha module `path` imports (absolute or relative, at any depth in the file):
    `from a import b` imports module a.b when there is one, else module a."""
    rel = path.relative_to(root.parent).with_suffix("")
    here = list(rel.parts[:-1])  # the package a relative import starts from (also for __init__.py)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                name = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == package:
                found |= {f"{name}.{a.name}" if is_module(f"{name}.{a.name}", root) else name for a in node.names}
    return found


def back_edges(root: Path, package: str = "lsmha") -> list[str]:
    """'a -> b' for each import that goes up a layer or across apart siblings."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts if rel.name != "__init__" else rel.parts[:-1])
        src = part_of(module)
        for target in sorted(imports_of(path, root, package)):
            dst = part_of(target)
            if dst == src or dst == "cli" and src == "cli":
                continue
            up = LAYERS[dst] > LAYERS[src]
            across = src != dst and {src, dst} <= SIBLINGS_APART
            if up or across:
                bad.append(f"{module} -> {target}")
    return bad


def test_imports_flow_one_way():
    assert back_edges(ROOT) == []


def test_every_part_has_a_layer():
    parts = {part_of(".".join(("lsmha", *p.relative_to(ROOT).with_suffix("").parts))) for p in ROOT.rglob("*.py")}
    parts.discard("__init__")
    assert parts <= set(LAYERS), parts - set(LAYERS)


def test_a_back_edge_is_found(tmp_path):
    fake = tmp_path / "lsmha"
    for sub in ("engine", "export", "models"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "models" / "spec.py").write_text("X = 1\n")
    (fake / "engine" / "run.py").write_text("from ..models import spec\n\ndef f():\n    from ..export import build\n")
    (fake / "export" / "build.py").write_text("import lsmha.models.spec\n")
    (fake / "models" / "model.py").write_text("from lsmha.engine import run\n")
    assert back_edges(fake) == ["lsmha.engine.run -> lsmha.export.build", "lsmha.models.model -> lsmha.engine.run"]
