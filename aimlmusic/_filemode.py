"""The mode a new file gets from the process's umask, for files made through ``mkstemp``.

``tempfile.mkstemp`` creates files 0600 whatever the umask (it is meant for secrets). Our
atomic writes (a temporary file renamed into place) deliver songs and manifests, which should
get the mode any other tool would give them: ``0666 & ~umask``.
"""

from __future__ import annotations

import os
import threading

__all__ = ["DEFAULT_CREATE_MODE", "file_mode_from_umask"]

#: What ``open(path, "w")`` asks the kernel for; the umask then takes bits away.
DEFAULT_CREATE_MODE = 0o666

#: Where Linux (4.7 and later) shows a process's umask without changing it.
_PROC_STATUS = "/proc/self/status"

_umask_lock = threading.Lock()


def _current_umask() -> int:
    try:
        with open(_PROC_STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way to read it is to set it and put it back; the lock keeps two of
    # our own threads from doing it at once.
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode_from_umask() -> int:
    """``0666 & ~umask``: the mode a newly created regular file gets."""
    return DEFAULT_CREATE_MODE & ~_current_umask()
