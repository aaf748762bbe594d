"""Reading the JSON texts of run dirs fast: a history of years of nightlies is thousands of
manifests and tens of thousands of validity records, and the standard library's decoder is
most of the time a load takes. orjson decodes the same texts ~2x faster; a text it refuses
(Python's json writes NaN/Infinity for float NaN/inf, which is not JSON) is read by the
standard library, so the result is always what ``json.loads`` gives."""
from __future__ import annotations

import contextlib
import gc
import json

try:
    import orjson
except ImportError:         # a dependency (pyproject); without it, only slower
    orjson = None


def loads(text: str | bytes):
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


@contextlib.contextmanager
def gc_paused():
    """Python's cycle collector paused while a load builds many small objects (JSON dicts,
    paths): its collections run every few hundred new containers and each walks every live
    object, which made decoding a history's JSON 2-3x slower. Reference counting still frees
    everything that is not a cycle; the collector resumes (if it ran before) at the end."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
