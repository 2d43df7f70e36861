"""The layout's rules that import-linter cannot see: no vitfast module hides an import of another
inside a function (cycles are fixed by moving code, not by deferring imports), and the CLI answers
`--help` without importing torch. The layer order itself is import-linter's contract (pyproject.toml,
checked by .ci/run)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# cli.py imports the library inside its commands so that `vitfast --help` stays fast (no torch).
DEFERRED_FOR_HELP = {ROOT / "cli.py"}


def _library_files() -> list[Path]:
    files = [p for p in (ROOT / "vitfast").rglob("*.py") if not p.is_symlink() and "kernels" not in p.parts]
    return files + sorted((ROOT / "kernels").glob("*.py")) + [ROOT / "cli.py"]


def _deferred_vitfast_imports(path: Path, root: Path = ROOT) -> list[str]:
    """'file:line module' for each import of a vitfast module inside a function body of `path`."""
    found = []
    for func in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith(("vitfast", ".")):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {name}")
    return sorted(set(found), key=found.index)


def test_the_walk_finds_every_layer():
    files = {str(p.relative_to(ROOT)) for p in _library_files()}
    for expected in ("vitfast/runtime.py", "vitfast/train/loop.py", "vitfast/metrics/clip.py",
                     "kernels/flash_attention.py", "vitfast/models/vit.py", "cli.py"):
        assert expected in files


def test_no_library_module_defers_an_import_of_its_own_package():
    deferred = [hit for path in _library_files() if path not in DEFERRED_FOR_HELP
                for hit in _deferred_vitfast_imports(path)]
    assert deferred == [], "move the code so the import can sit at the top of the module:\n" + "\n".join(deferred)


def test_the_checker_sees_a_deferred_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from vitfast.models import create_model\n    return create_model\n")
    assert _deferred_vitfast_imports(module, tmp_path) == ["m.py:4 vitfast.models"]


def test_cli_help_does_not_import_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom vitfast.cli import app\n"
            "result = CliRunner().invoke(app, ['train', '--help'])\n"
            "assert result.exit_code == 0, result.output\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_checkout_root_on_sys_path_does_not_register_the_kernels_twice():
    """Run from the repository root (``python -m ...``), kernels/ is also a top-level "kernels", a name
    transformers imports while probing for the Hub's package. That import must not run the kernel files
    again: their torch.library ops would be registered a second time, over vitfast.kernels' own."""
    code = ("import sys, importlib; sys.path.insert(0, sys.argv[1]); import vitfast.kernels as vk; "
            "top = importlib.import_module('kernels'); "
            "print(top is not vk, top.__all__, sorted(m for m in sys.modules if m.startswith('kernels.')))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "[]", "[]"]
