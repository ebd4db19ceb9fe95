"""``python -m bnrl``: the command line."""

import sys

from bnrl.run import main

sys.exit(main())
