"""`python -m coopstance ...` is the `coopstance` command."""

import sys

from coopstance.cli import main

sys.exit(main())
