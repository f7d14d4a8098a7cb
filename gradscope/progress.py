"""Progress output shared by training and dataset decoding."""
from __future__ import annotations

import os
import sys


def bar_size() -> dict:
    """Extra tqdm options: none, unless stderr is a terminal that reports a 0x0 size, as a
    pseudo-terminal without a window size does (``script -c``, some CI runners and IDE consoles).
    tqdm then hides every bar (its position 0 is not above a screen height of 0) and sizes it
    0 wide, so nothing is drawn; 80x24 is used instead."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return {}
    return {} if size.columns > 0 and size.lines > 0 else {"ncols": 80, "nrows": 24}
