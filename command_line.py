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
