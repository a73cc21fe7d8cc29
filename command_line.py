"""What the command lines share: one-line usage errors and the original's single-dash flags."""
import argparse


class UsageError(Exception):
    """A flag or path the user gave that cannot work; the command exits 2 with one line."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (UsageError), single-dash long flags and their double-dash aliases."""

    def flag(self, name, **kwargs):
        self.add_argument(f'-{name}', f'--{name}', **kwargs)

    def error(self, message):
        raise UsageError(message)


def error_line(error):
    """An error's message on one line. A DataLoader worker re-raises an error with its traceback in
    the message, ending in `module.Class: message`: the original message is taken from there."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    wrapped = f'{type(error).__module__}.{type(error).__name__}: '
    return lines[-1].removeprefix(wrapped).removeprefix(f'{type(error).__name__}: ')
