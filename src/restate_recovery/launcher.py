"""The ``restate-recovery`` command: the CLI, started and stopped without Python's own waste.

The operator's doctor should answer and exit within 2 s (docs/performance.md), and two costs on
the way are the interpreter's, not the work's: the cyclic garbage collector runs again and again
while the CLI's libraries import (about 0.1 s on these machines), and once more over every object
at exit (about 0.25 s, most of them SQLAlchemy's). Imports leave no garbage worth collecting and
the process frees all its memory when it exits, so the collector is paused for the imports, and
the objects alive at exit are frozen (``gc.freeze``) so that the last collection skips them.
Nothing else changes: exit handlers run and buffers are flushed as usual.
"""

from __future__ import annotations

import atexit
import gc


def main() -> None:
    gc.disable()
    try:
        from restate_recovery.cli import app
    finally:
        gc.enable()
    atexit.register(gc.freeze)  # registered before the command runs: it runs after its handlers
    app()
