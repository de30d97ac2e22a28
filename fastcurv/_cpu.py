"""What the kernels need to know about the CPU they run on (read once, never required)."""

import functools
import os


@functools.lru_cache(maxsize=1)
def l2_bytes():
    """Size in bytes of the L2 cache of one core, or ``None`` where it cannot be read.

    Linux's ``/sys/devices/system/cpu/cpu0/cache/index*/`` first (level 2, data or unified),
    then ``sysconf(SC_LEVEL2_CACHE_SIZE)`` (glibc). Only performance choices depend on it,
    never a result's bits.
    """
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            path = os.path.join(base, entry)
            with open(os.path.join(path, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(path, "type")) as f:
                kind = f.read().strip()
            if level == "2" and kind in ("Unified", "Data"):
                with open(os.path.join(path, "size")) as f:
                    return _parse_size(f.read().strip())
    except (OSError, ValueError):
        pass
    try:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None
    return size if size > 0 else None


def _parse_size(text):
    """``"2048K"`` -> 2097152 (sysfs spells sizes with a K or M suffix)."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper())
    return int(text[:-1]) * scale if scale else int(text)
