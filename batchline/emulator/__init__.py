"""A local emulator of Anthropic's Message Batches API, faithful enough to test a pipeline against.

Start one with `Emulator(EmulatorConfig(...))` (a context manager) and point the official SDK at
`emulator.base_url`; see docs/emulator.md for the behaviour, the faults and the approximations.
"""

from batchline.emulator.config import EmulatorConfig
from batchline.emulator.emulator import Emulator

__all__ = ["Emulator", "EmulatorConfig"]
