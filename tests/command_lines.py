"""Runs a command-line script on several argument lists in one process, each as `python SCRIPT ARGS`
runs it (`__main__`, its own sys.argv, its own stdout and stderr, its exit status), so that the
tests of its mistakes pay torch's and Lightning's imports once instead of once per case.

    python tests/command_lines.py SCRIPT < [[arg, ...], ...]   ->   [{"code", "stdout", "stderr"}, ...]

Tests call `run_in_one_process`.
"""
import contextlib
import io
import json
import logging
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def run_in_one_process(script, cases, env=None, timeout=600, cwd=REPOSITORY):
    """{name: {'code', 'stdout', 'stderr'}} of the repository's `script` run with each of `cases`
    ({name: arguments}), all in one new process in `cwd` with `env` added to its environment."""
    argument_lists = [[str(argument) for argument in arguments] for arguments in cases.values()]
    result = subprocess.run([sys.executable, __file__, str(REPOSITORY / script)], input=json.dumps(argument_lists),
                            cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(zip(cases, json.loads(result.stdout.splitlines()[-1])))


def run_python(*args, python=sys.executable, cwd=REPOSITORY, pythonpath=(REPOSITORY,)):
    """Run `python *args` with only `pythonpath` added to its path; the finished process."""
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    if pythonpath:
        env['PYTHONPATH'] = os.pathsep.join(map(str, pythonpath))
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def run(script, argv):
    """{'code', 'stdout', 'stderr'} of one run of `script` with arguments `argv`."""
    out, err = io.StringIO(), io.StringIO()
    logging.root.handlers.clear()  # the script's logging.basicConfig then writes to this run's stderr
    sys.argv = [script, *argv]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name='__main__')
        except SystemExit as exit:
            if isinstance(exit.code, str):  # sys.exit(message): Python prints it and exits 1
                print(exit.code, file=err)
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except BaseException:  # what an uncaught error does to a real process
            traceback.print_exc(file=err)
            code = 1
    return {'code': code, 'stdout': out.getvalue(), 'stderr': err.getvalue()}


if __name__ == '__main__':
    script, cases = sys.argv[1], json.load(sys.stdin)
    results = [run(script, argv) for argv in cases]
    print(json.dumps(results), file=sys.__stdout__)
