"""``python -m pidm_fem.cli``: the ``pidm-fem`` command."""

import sys

from pidm_fem.cli import main

sys.exit(main())
