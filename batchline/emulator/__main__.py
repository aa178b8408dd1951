"""`python -m batchline.emulator`: the same as `batchline emulator`."""

import sys

from batchline.emulator.cli import main

sys.exit(main())
