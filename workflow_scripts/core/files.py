"""File permissions of written results: what the umask allows, for files and folders alike.

``safetensors`` (and ``tempfile``) create files with mode 0600 and folders with 0700 whatever
the umask, while ``open()`` gives 0666 & ~umask. In a project directory shared by a lab (a
cluster's group folder, umask 002 or 022) the hidden-state caches, fine-tuned and pruned
weights would be unreadable to everyone but their writer. :func:`apply_umask` gives a written
file or folder (recursively) the mode an ordinary ``open()`` / ``mkdir()`` would have given it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux exposes it (``/proc``); else
    set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(is_dir: bool, executable: bool = False, umask: int | None = None) -> int:
    """The permission bits ``mkdir`` (folders, executables: 0777) or ``open`` (0666) give under
    ``umask`` (default: the process's)."""
    base = 0o777 if is_dir or executable else 0o666
    return base & ~(current_umask() if umask is None else umask)


def apply_umask(path: str | os.PathLike, umask: int | None = None) -> None:
    """Give ``path`` and, for a folder, everything below it the umask's permissions (files
    0666 & ~umask, folders and files with an execute bit 0777 & ~umask). Symbolic links are
    left alone; a path that vanished meanwhile is skipped."""
    mask = current_umask() if umask is None else umask
    root = Path(path)
    todo = [root]
    if root.is_dir() and not root.is_symlink():
        for top, dirs, names in os.walk(root):  # does not follow links
            todo += [Path(top, n) for n in dirs + names]
    for p in todo:
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        mode = umask_mode(is_dir, bool(st.st_mode & 0o111), mask)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(p, mode)
