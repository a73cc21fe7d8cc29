"""Single-video classification command line (not built yet)."""
from python_check import check_python

check_python()

import sys  # noqa: E402  (after the Python check, as every later import)


if __name__ == '__main__':
    sys.exit('model_inference.py is not built yet: it arrives with the inference CLI issue.')
