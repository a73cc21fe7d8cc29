"""What installing promises: old Pythons stop with one line, and the checkout installs as a project whose
modules import from any folder."""
import importlib.metadata
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from command_lines import run_python
from python_check import MIN_PYTHON, check_python

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(path.stem for path in REPO.glob('*.py') if path.stem != 'setup')
COMMAND_LINES = ('model_pretrain.py', 'model_inference.py', 'prepare_videos.py')


def old_pythons():
    """Interpreters older than MIN_PYTHON on PATH or beside this one (pyenv's versions folder)."""
    candidates = [shutil.which(f'python3.{minor}') for minor in range(6, MIN_PYTHON[1])]
    # Python 3 only: Python 2 cannot parse the command lines' f-strings, so it never reaches the check.
    candidates += sorted(Path(sys.base_prefix).parent.glob('3.*/bin/python'))
    found = []
    for candidate in filter(None, candidates):
        probe = run_python('-c', f'import sys; print(sys.version_info[:2] < {MIN_PYTHON})', python=candidate)
        if probe.returncode == 0 and probe.stdout.strip() == 'True':
            found.append(candidate)
    return found


def test_check_python_passes_here_and_matches_pyproject():
    assert check_python() is None
    requires = re.search(r'^requires-python = ">=(\d+)\.(\d+)"$', (REPO / 'pyproject.toml').read_text(), re.M)
    assert requires and tuple(map(int, requires.groups())) == MIN_PYTHON


def test_too_old_python_gets_one_line_and_status_1():
    too_old = run_python('-c', 'from python_check import check_python; check_python((99, 0))')
    assert too_old.returncode == 1
    assert too_old.stderr.splitlines() == [
        f'VideoTransformer-pytorch needs Python 99.0 or newer; {sys.executable} is Python {sys.version.split()[0]}.']


@pytest.mark.parametrize('script', COMMAND_LINES)
def test_command_lines_stop_at_once_on_an_old_python(script):
    pythons = old_pythons()
    if not pythons:
        pytest.skip(f'no Python older than {MIN_PYTHON} found on PATH or beside {sys.base_prefix}')
    for python in pythons:
        # Nothing but the script's own folder on its path, as a user runs it.
        result = run_python(script, '--help', python=python, pythonpath=())
        assert result.returncode == 1, (python, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and 'VideoTransformer-pytorch needs Python 3.10 or newer' in lines[0], (python, lines)


# ---------------------------------------------------------------- the project

def installed_from_this_checkout():
    """True when `pip install -e .` ran for this checkout in this environment."""
    # The build's own egg-info in the checkout is found too (the checkout is on the path); pip's record is not.
    records = (dist.read_text('direct_url.json') for dist in importlib.metadata.distributions(
        name='videotransformer-pytorch'))
    return any(json.loads(record)['url'] == REPO.as_uri() for record in records if record)


def test_every_module_imports_from_outside_the_checkout(tmp_path):
    if not installed_from_this_checkout():
        pytest.skip(f'this checkout is not installed here: pip install -e {REPO}')
    outside = run_python('-c', f'import importlib; print("\\n".join(importlib.import_module(name).__file__ '
                         f'for name in {MODULES}))', cwd=tmp_path, pythonpath=())
    assert outside.returncode == 0, outside.stderr
    assert outside.stdout.split() == [str(REPO / f'{name}.py') for name in MODULES]


def test_a_wheel_of_the_checkout_holds_every_module(tmp_path):
    # setuptools builds wheels by itself from 70.1 on (before, only with the wheel package).
    pytest.importorskip('setuptools', minversion='70.1')
    for name in ('pyproject.toml', 'setup.py', 'README.md', 'requirements.txt', 'requirements-test.txt',
                 'requirements-onnx.txt', *(f'{module}.py' for module in MODULES)):
        shutil.copy(REPO / name, tmp_path / name)
    build = f'from setuptools import build_meta; print(build_meta.build_wheel({str(tmp_path / "dist")!r}))'
    built = run_python('-c', build, cwd=tmp_path, pythonpath=())
    assert built.returncode == 0, built.stderr
    with zipfile.ZipFile(tmp_path / 'dist' / built.stdout.split()[-1]) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(name for name in names if name.endswith('.dist-info/METADATA'))).decode()
    assert sorted(name[:-3] for name in names if '/' not in name) == MODULES
    assert 'Requires-Python: >=3.10' in metadata
    # The dependencies are requirements.txt's, read when the wheel is built; the test extra adds its own.
    requirements = [line for line in (REPO / 'requirements.txt').read_text().splitlines()
                    if line and not line.startswith('#')]
    required = re.findall(r'^Requires-Dist: ([\w-]+)[^;\n]*$', metadata, re.M)
    assert required == [re.match(r'[\w-]+', line).group() for line in requirements]
    # The onnx extra, also part of the test extra so CI runs the ONNX tests.
    extras = {extra: re.findall(rf'^Requires-Dist: ([\w-]+).*extra == "{extra}"', metadata, re.M)
              for extra in ('onnx', 'test')}
    assert extras['onnx'] == ['onnx', 'onnxscript', 'onnxruntime'] and set(extras['onnx']) < set(extras['test'])
