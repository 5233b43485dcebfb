"""`python -m jaxobs.cli`: the `jaxobs` command."""

import sys

from jaxobs.cli.main import main

sys.exit(main())
