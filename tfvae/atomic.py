"""Atomic file writes: a file is either complete or as it was, whatever kills the writer."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yields a temporary path beside `path` (same suffix) that replaces `path` if the block succeeds.

    The data is flushed to disk before the rename; on an error the temporary file is removed and
    `path` is left as it was. `suffix`: the temporary file's, when more than the last extension
    matters (Keras's `save_weights` takes only paths ending in ".weights.h5").
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    # Keras and numpy pick the format by the suffix, so the temporary file keeps it.
    # The writer's pid in the name: once it is gone, its leftover can be told from a live write.
    suffix = suffix or os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def process_alive(pid):
    """Whether a process `pid` exists (on this machine): a leftover of a live one may still be in use."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
