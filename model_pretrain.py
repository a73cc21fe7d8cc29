"""Training command line (not built yet)."""
import sys


if __name__ == '__main__':
    sys.exit('model_pretrain.py is not built yet: it arrives with the training CLI issue.')
