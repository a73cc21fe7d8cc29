"""What the command lines share: one-line usage errors and the original's single-dash flags."""
import argparse


class UsageError(Exception):
    """A flag or path the user gave that cannot work; the command exits 2 with one line."""


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes raise UsageError, for the command to print as one line and exit 2."""

    def error(self, message):
        raise UsageError(message)


def add_flag(container, name, **kwargs):
    """A flag in the original's single-dash spelling (-lr) and the usual double-dash one (--lr), on a
    parser or an argument group."""
    container.add_argument(f'-{name}', f'--{name}', **kwargs)


def error_line(error, named=False, first=False):
    """An error's message on one line, after its class name when `named` ('DecodeError: ...'). A
    DataLoader worker re-raises an error with its traceback in the message, ending in
    `module.Class: message`: the original message is taken from there; `first` takes the first
    line instead, where the exporter and onnxruntime put their reason. The one "error to one line"
    of the repository."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    name = type(error).__name__
    if not lines:
        return name
    line = lines[0] if first else lines[-1].removeprefix(f'{type(error).__module__}.{name}: ').removeprefix(f'{name}: ')
    return f'{name}: {line}' if named else line


def os_error_line(error):
    """An OSError as one line for a command's `error:` line: 'FILE: REASON' ('out/model.onnx: Permission
    denied'), the reason alone where the error names no file."""
    reason = error.strerror or error_line(error)
    files = [str(name) for name in (error.filename, error.filename2) if name is not None]
    return ': '.join([' -> '.join(files), reason] if files else [reason])
