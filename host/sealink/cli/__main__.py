"""`python -m sealink.cli`: the same entry point as the `sealink` script."""

import sys

from sealink.cli.main import main

sys.exit(main())
