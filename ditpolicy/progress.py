"""Progress bars that stay readable in log files: when stderr is not a terminal they refresh
every 30 s instead of many times a second."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(**kwargs) -> tqdm:
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    return tqdm(**kwargs)
