"""`python -m wanx_imageedit.nodes.emulator [options]`: serve the emulator until Ctrl-C
(`--help` lists every option, fault and outcome)."""

import sys

from .command import main

sys.exit(main())
