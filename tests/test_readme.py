"""The README's Python example runs as written, and every docs/ page is linked from the README."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_the_python_example_runs_as_written(tmp_path):
    (example,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(example.strip().splitlines()) <= 12
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    backend_line, accuracy_line = done.stdout.strip().splitlines()[-2:]
    assert backend_line.split()[0].startswith(("openvino[", "onnxruntime[", "torch["))
    assert accuracy_line.startswith("{'committee': ")
    assert (tmp_path / "exports" / "example" / "manifest.json").is_file()


def test_readme_is_short_and_links_every_docs_page():
    assert len(README.splitlines()) <= 250
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert pages and all(f"({page})" in README for page in pages), [p for p in pages if f"({p})" not in README]


def test_readme_commands_name_real_console_scripts():
    scripts = set(re.findall(r"^(lsmha-[a-z]+) = ", (ROOT / "pyproject.toml").read_text(), flags=re.M))
    used = set(re.findall(r"\b(lsmha-[a-z]+)\b", README))
    assert used <= scripts, used - scripts


def test_the_first_models_example_runs_as_pasted(tmp_path):
    """docs/models.md's first snippet defines what it uses (the images) and runs in an empty directory."""
    text = (ROOT / "docs" / "models.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "m.safetensors").is_file()
