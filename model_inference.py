"""Single-video classification command line (not built yet)."""
import sys


if __name__ == '__main__':
    sys.exit('model_inference.py is not built yet: it arrives with the inference CLI issue.')
