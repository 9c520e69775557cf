"""Instance-level forward patches that always come off again."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def patched_forwards(modules, make_forward, counter=None, key: str = ""):
    """Give each module the forward `make_forward(module)` for the duration of the block. The
    instance attribute shadows the class's forward; deleting it restores the original exactly.
    With a `counter` (an LM's telemetry), every patched call adds one to counter[key], which is
    what the methods' effect checks read: a patch that never ran is a silent no-op."""
    for m in modules:
        forward = make_forward(m)
        if counter is not None:
            forward = _counted(forward, counter, key)
        m.forward = forward
    try:
        yield
    finally:
        for m in modules:
            del m.forward


def _counted(forward, counter, key):
    def wrapper(*args, **kwargs):
        counter[key] += 1
        return forward(*args, **kwargs)

    return wrapper
