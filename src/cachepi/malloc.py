"""Giving memory freed after a big page back to the system.

glibc's malloc serves a big allocation with mmap, returned whole when freed, but raises that
size threshold to the size of each such block freed, up to 32 MiB. After one big page, the
buffers of the next ones (a few megabytes each) come from the heap, where what is freed
stays with the process. A fixed threshold keeps big buffers in mmap; two arenas, instead
of eight per core, keep the render threads from each holding a heap of their own. A worker
that fetched and rendered the 800,000-name project list kept 65 MB of RSS more without
these (bench/results/notes.md).

The threshold is 1 MiB, above the blocks a download passes through by the thousand (the
socket's reads of 256 KiB and what is made of them): below it they come from the heap and
its freed space is used again, where in mmap every one of them was pages mapped, zeroed and
unmapped anew, a quarter of a miss's CPU (bench/results/notes.md). The heap keeps up to
`TRIM_THRESHOLD` free at its top for them rather than giving it back after each.
"""

from __future__ import annotations

import ctypes

# mallopt() parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 4 * 1024 * 1024
ARENAS = 2


def give_back_big_blocks() -> None:
    """Tune this process's malloc, where it is glibc's (elsewhere nothing is done)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library to ask, or one without mallopt
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mallopt(_M_ARENA_MAX, ARENAS)
