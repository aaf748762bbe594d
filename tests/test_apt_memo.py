"""AptState.query keeps a read-only apt answer under the apt state's fingerprint, so each run
finds its cached guest without asking apt again (seconds a call where apt keeps no
pkgcache.bin); a changed list, status or source is a new fingerprint and a new question.
The "query" here is a shell command printing a fresh number each time it really runs."""
from __future__ import annotations

import os

import pytest

from harness.images.aptstate import AptState, AptStateError

FRESH = ["sh", "-c", "cat /proc/sys/kernel/random/uuid"]


def _private(tmp_path):
    root = tmp_path / "apt"
    for d in ("state/lists/partial", "sources.list.d", "preferences.d"):
        (root / d).mkdir(parents=True)
    (root / "state" / "status").write_text("")
    (root / "sources.list").write_text("deb x bookworm main\n")
    (root / "apt.conf").write_text("")
    (root / "state" / "lists" / "x_Packages").write_text("Package: a\n")
    return AptState("12", root)


def test_same_lists_same_answer_without_asking_again(tmp_path):
    st, memo = _private(tmp_path), tmp_path / "memo"
    first = st.query(FRESH, memo)
    assert st.query(FRESH, memo) == first
    assert st.query(FRESH, None) != first            # no memo dir: asked every time
    assert st.query([*FRESH, "other"], memo) != first   # another question, another answer


@pytest.mark.parametrize("change", ["state/lists/x_Packages", "state/status", "sources.list", "preferences.d/pin"])
def test_a_changed_input_is_asked_again(tmp_path, change):
    st, memo = _private(tmp_path), tmp_path / "memo"
    first = st.query(FRESH, memo)
    f = st.root / change
    f.write_text((f.read_text() if f.exists() else "") + "changed\n")
    os.utime(f, ns=(1, 1))     # even an mtime in the past: the size differs
    assert st.query(FRESH, memo) != first


def test_partial_downloads_and_locks_do_not_change_the_fingerprint(tmp_path):
    st = _private(tmp_path)
    fp = st.fingerprint()
    (st.root / "state" / "lists" / "partial" / "x_Packages.xz").write_text("half")
    (st.root / "state" / "lists" / "lock").write_text("")
    assert st.fingerprint() == fp


def test_a_failed_query_raises_and_is_not_kept(tmp_path):
    st, memo = _private(tmp_path), tmp_path / "memo"
    with pytest.raises(AptStateError, match="failed \\(3\\): no such package"):
        st.query(["sh", "-c", "echo no such package >&2; exit 3"], memo)
    assert not memo.exists() or not list(memo.iterdir())
