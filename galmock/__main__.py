"""``python -m galmock``: the command line (:mod:`galmock.cli`)."""

import sys

from galmock.cli import main

if __name__ == "__main__":
    sys.exit(main())
