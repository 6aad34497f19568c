import sys

from galmock.cli import main

sys.exit(main())
