"""The supported Python versions, checked by the command lines before they import anything heavy.

Kept free of newer syntax (no f-strings) so that an old interpreter gets as far as the check.
"""
import sys

MIN_PYTHON = (3, 10)


def check_python(minimum=MIN_PYTHON):
    """Exit with one line on stderr (status 1) when this interpreter is older than `minimum`."""
    if sys.version_info[:2] < tuple(minimum):
        sys.exit('VideoTransformer-pytorch needs Python {} or newer; {} is Python {}.'.format(
            '.'.join(map(str, minimum)), sys.executable, sys.version.split()[0]))
