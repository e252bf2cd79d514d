"""`python -m deskgen`: the deskgen command line."""

import sys

from .cli import main

sys.exit(main())
