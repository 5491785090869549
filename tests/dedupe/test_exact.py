from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fastprep.kernels.exact import insert_keys, insert_keys_reference
from fastprep.dedupe.exact import ExactDeduper


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=200))
def test_insert_kernel_matches_reference(pairs: list[tuple[int, int]]) -> None:
    # tiny key space: many repeats, many probe collisions (slot = low word & mask)
    keys = np.array(pairs, dtype=np.uint64).reshape(-1, 2)
    table = np.zeros((512, 2), np.uint64)
    used = np.zeros(512, np.uint8)
    got = np.zeros(len(keys), np.bool_)
    slots = np.full(len(keys), -1, np.int64)
    count = insert_keys(table, used, 0, keys, got, slots)
    want = insert_keys_reference(set(), keys)
    assert got.tolist() == want.tolist()
    assert count == len(set(pairs)) == int(used.sum())
    # every key's slot holds that key: equal keys share a slot, distinct keys never do
    assert all(table[s].tolist() == list(k) for s, k in zip(slots.tolist(), pairs))
    assert len(set(slots.tolist())) == count


def test_exact_deduper_first_occurrence_across_batches_and_growth() -> None:
    d = ExactDeduper(capacity=16)  # forces several rehashes
    docs = [f"doc {i % 700}" for i in range(2000)]
    seen: set[str] = set()
    for lo in range(0, len(docs), 333):
        batch = docs[lo:lo + 333]
        got = d(batch)
        want = []
        for s in batch:
            want.append(s not in seen)
            seen.add(s)
        assert got.tolist() == want
    assert d.count == 700
    assert d.nbytes <= 4096 * 17  # 700 keys at <= half load: 2048 slots of 17 bytes
    assert d(["doc 5", "new doc", "Doc 5"]).tolist() == [False, True, True]


def test_tracking_deduper_names_each_copys_first_occurrence_across_growth() -> None:
    """--dedupe-report's exact entries: the id of the first occurrence, also after the table
    rehashed (values must move with their keys) and for a copy inside the same call."""
    d = ExactDeduper(capacity=16, track=True)
    first: dict[str, int] = {}
    docs = [f"doc {(i * 7) % 500}" for i in range(1500)]
    for lo in range(0, len(docs), 250):
        batch = docs[lo:lo + 250]
        ids = np.arange(lo, lo + len(batch), dtype=np.int64) * 3 + 1
        new = d.insert(d.digests(batch), ids)
        want_matches = []
        for s, i in zip(batch, ids.tolist()):
            if s in first:
                want_matches.append(first[s])
            else:
                first[s] = i
        assert new.tolist() == [s_i == first[s] for s, s_i in zip(batch, ids.tolist())]
        assert d.matches.tolist() == want_matches
    assert d.nbytes > ExactDeduper(capacity=16).nbytes
