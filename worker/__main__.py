"""``python -m worker``: the same as ``r2v worker``."""

import sys

from worker.cli import main

sys.exit(main(sys.argv[1:]))
