"""fastprep.stages.mix: the mix plan against a slow pure-Python reference, the validation
split's per-source counts, source assignment, ``--mix`` parsing and the configs' validation."""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from fastprep.stages.mix import (
    MixConfig,
    MixError,
    Source,
    SplitConfig,
    assign_sources,
    effective_tokens,
    mix_plan,
    parse_mix,
    validation_split,
)


def sources(weights: list[float]) -> tuple[Source, ...]:
    return tuple(Source(name=f"s{i}", paths=(f"s{i}.jsonl",), weight=w) for i, w in enumerate(weights))


def reference_plan(eff: list[int], source: list[int], weights: list[int], tokens: int,
                   max_repeat: float, seed: int) -> dict | None:
    """The documented algorithm, one document at a time: per source, whole epochs, then a
    seeded random order cut where its running sum comes nearest the rest. None: the mix
    must be refused (a source with no documents, or more than ``max_repeat`` epochs).

    The permutation is the one seeded stream the format promises (``default_rng([seed,
    source])``); everything else is plain Python."""
    n, k = len(eff), len(weights)
    wsum = float(sum(weights))
    docs = [[i for i in range(n) if source[i] == s and eff[i] > 0] for s in range(k)]
    have = [sum(eff[i] for i in d) for d in docs]
    total = tokens or sum(have)
    want = [round(weights[s] / wsum * total) for s in range(k)]
    for s in range(k):
        if want[s] and not have[s]:
            return None
        if have[s] and want[s] / have[s] > max_repeat + 1e-9:
            return None
    uses = [0] * n
    for s, d in enumerate(docs):
        if not have[s]:
            continue
        full, rest = divmod(want[s], have[s])
        for i in d:
            uses[i] = full
        if rest <= 0:
            continue
        perm = np.random.default_rng([seed, s]).permutation(len(d)).tolist()
        run = 0
        for j in perm:
            i = d[j]
            if run + eff[i] >= rest:  # the document that crosses the target: the nearer cut
                if run + eff[i] - rest <= rest - run:
                    uses[i] += 1
                break
            run += eff[i]
            uses[i] += 1
    order = [i for e in range(max(uses, default=0)) for i in range(n) if uses[i] > e]
    return {"uses": uses, "order": order, "want": want, "have": have, "docs": docs, "total": total}


def random_case(rng: random.Random) -> tuple[list[int], list[int], list[int], int, float, int]:
    k = rng.randint(1, 4)
    n = rng.randint(0, 60)
    eff = [0 if rng.random() < 0.2 else rng.randint(1, 40) for _ in range(n)]
    source = [rng.randrange(k) for _ in range(n)]
    weights = [rng.randint(1, 10) for _ in range(k)]
    tokens = 0 if rng.random() < 0.4 else rng.randint(1, 3 * max(sum(eff), 1))
    max_repeat = rng.choice([1.0, 2.5, 4.0, 1000.0])
    return eff, source, weights, tokens, max_repeat, rng.randrange(1000)


def test_mix_plan_matches_slow_reference_on_random_lengths() -> None:
    rng = random.Random(16)
    planned = refused = 0
    for _ in range(400):
        eff, source, weights, tokens, max_repeat, seed = random_case(rng)
        cfg = MixConfig(sources=sources([float(w) for w in weights]), tokens=tokens,
                        max_repeat=max_repeat, seed=seed)
        ref = reference_plan(eff, source, weights, tokens, max_repeat, seed)
        if ref is None:
            with pytest.raises(MixError):
                mix_plan(np.array(eff, np.int64), np.array(source, np.int64), cfg)
            refused += 1
            continue
        plan = mix_plan(np.array(eff, np.int64), np.array(source, np.int64), cfg)
        planned += 1
        assert plan.uses.tolist() == ref["uses"]
        assert plan.order.tolist() == ref["order"]
        assert plan.tokens == ref["total"]
        used_total = sum(u * e for u, e in zip(ref["uses"], eff))
        for s, st in enumerate(plan.sources):
            d = ref["docs"][s]
            used = sum(ref["uses"][i] * eff[i] for i in d)
            assert st["tokens"] == ref["have"][s] and st["documents"] == len(d)
            assert st["tokens_used"] == used
            assert st["documents_used"] == sum(ref["uses"][i] > 0 for i in d)
            assert st["documents_repeated"] == sum(ref["uses"][i] > 1 for i in d)
            assert st["repeated_uses"] == sum(max(ref["uses"][i] - 1, 0) for i in d)
            assert st["share"] == pytest.approx(used / used_total if used_total else 0.0, abs=1e-6)
            assert st["weight"] == pytest.approx(weights[s] / sum(weights), abs=1e-6)
            if d:  # the target of each source, exact up to one document
                assert abs(used - ref["want"][s]) <= max(eff[i] for i in d)
        # removed documents (eff 0) are never used; the order lists each document once per use
        assert all(u == 0 for u, e in zip(plan.uses.tolist(), eff) if e == 0)
        assert np.bincount(plan.order, minlength=len(eff)).tolist() == plan.uses.tolist()
    assert planned > 250 and refused > 20  # both branches really drawn


def test_mix_plan_downsamples_and_repeats_by_whole_documents() -> None:
    # source 0: 100 documents of 10 tokens (1000); source 1: 10 of 10 (100); equal weights of
    # 1100 tokens: source 0 gives about half of its documents, source 1 every one 5 or 6 times
    eff = np.full(110, 10, np.int64)
    source = np.array([0] * 100 + [1] * 10)
    plan = mix_plan(eff, source, MixConfig(sources=sources([1.0, 1.0]), max_repeat=6))
    assert set(plan.uses[:100].tolist()) == {0, 1} and int(plan.uses[:100].sum()) == 55
    assert set(plan.uses[100:].tolist()) == {5, 6} and int(plan.uses[100:].sum()) == 55
    assert [s["tokens_used"] for s in plan.sources] == [550, 550]
    assert [s["share"] for s in plan.sources] == [0.5, 0.5]
    # seeded: the same seed decides the same subset, another seed another one
    again = mix_plan(eff, source, MixConfig(sources=sources([1.0, 1.0]), max_repeat=6))
    other = mix_plan(eff, source, MixConfig(sources=sources([1.0, 1.0]), max_repeat=6, seed=1))
    assert again.uses.tolist() == plan.uses.tolist()
    assert other.uses.tolist() != plan.uses.tolist()
    assert int(other.uses[:100].sum()) == 55
    # --mix-tokens scales the whole mix
    half = mix_plan(eff, source, MixConfig(sources=sources([1.0, 1.0]), tokens=200))
    assert [s["tokens_used"] for s in half.sources] == [100, 100] and half.tokens == 200


def test_max_repeat_message_names_source_tokens_and_working_fixes() -> None:
    eff = np.full(33, 10, np.int64)
    source = np.array([0] * 3 + [1] * 30)
    srcs = (Source("small", ("small.jsonl",), 1.0), Source("big", ("big.jsonl",), 1.0))
    with pytest.raises(MixError) as e:
        mix_plan(eff, source, MixConfig(sources=srcs))
    msg = str(e.value)
    assert msg.startswith("mix source 'small' holds 30 tokens; its weight 0.5 of 330 tokens needs 165, "
                          "5.50 epochs, more than --max-repeat 4")
    assert "'big'" not in msg
    share = float(re.search(r"lower its share to ([\d.]+)", msg).group(1))
    repeat = float(re.search(r"raise --max-repeat to ([\d.]+)", msg).group(1))
    tokens = int(re.search(r"--mix-tokens ([\d,]+) or less", msg).group(1).replace(",", ""))
    assert (share, repeat, tokens) == (0.3636, 5.5, 240)
    # each fix the message offers makes the plan
    mix_plan(eff, source, MixConfig(sources=srcs, max_repeat=repeat))
    mix_plan(eff, source, MixConfig(sources=srcs, tokens=tokens))
    mix_plan(eff, source, MixConfig(sources=(Source("small", ("small.jsonl",), share),
                                             Source("big", ("big.jsonl",), 1 - share))))
    with pytest.raises(MixError, match="'small'"):
        mix_plan(eff, source, MixConfig(sources=srcs, tokens=tokens + 10))


def test_source_without_documents_is_an_error_naming_its_paths() -> None:
    eff = np.array([5, 0, 0], np.int64)  # source 1's documents were all removed
    with pytest.raises(MixError, match=r"'s1' has no documents left .* \(s1\.jsonl\)"):
        mix_plan(eff, np.array([0, 1, 1]), MixConfig(sources=sources([1.0, 1.0])))


def largest_remainder_ok(counts: list[int], n_val: int, take: list[int]) -> None:
    kept = sum(counts)
    exact = [Fraction(c * n_val, kept) for c in counts]
    assert sum(take) == n_val
    for t, x in zip(take, exact):
        assert math.floor(x) <= t <= math.floor(x) + 1 and t <= math.ceil(x)
    up = [s for s in range(len(counts)) if take[s] > math.floor(exact[s])]
    down = [s for s in range(len(counts)) if take[s] == math.floor(exact[s])]
    if up and down:  # the extra documents went to the largest remainders
        assert min(exact[s] - math.floor(exact[s]) for s in up) >= \
            max(exact[s] - math.floor(exact[s]) for s in down) - Fraction(1, 10**9)


def test_validation_split_counts_per_source_sum_exactly() -> None:
    rng = random.Random(5)
    for trial in range(300):
        k = rng.randint(1, 5)
        n = rng.randint(2, 120)
        eff = np.array([0 if rng.random() < 0.15 else rng.randint(1, 30) for _ in range(n)], np.int64)
        source = np.array([rng.randrange(k) for _ in range(n)], np.int64)
        kept = int((eff > 0).sum())
        if kept < 2:
            continue
        if trial % 2:
            cfg = SplitConfig(docs=rng.randint(1, kept - 1))
            n_val = cfg.docs
        else:
            cfg = SplitConfig(fraction=rng.uniform(0.5, kept - 1) / kept)
            n_val = round(cfg.fraction * kept)
        seed = rng.randrange(100)
        val = validation_split(eff, source, k, cfg, seed)
        assert val.dtype == np.bool_ and val.shape == eff.shape
        assert int(val.sum()) == n_val
        assert not (val & (eff == 0)).any()  # only kept documents
        counts = [int(((source == s) & (eff > 0)).sum()) for s in range(k)]
        take = [int((val & (source == s)).sum()) for s in range(k)]
        largest_remainder_ok(counts, n_val, take)
        assert validation_split(eff, source, k, cfg, seed).tolist() == val.tolist()


def test_validation_split_exact_counts_and_seed() -> None:
    eff = np.ones(10, np.int64)
    source = np.array([0] * 5 + [1] * 3 + [2] * 2)
    val = validation_split(eff, source, 3, SplitConfig(docs=5), 0)
    # exact shares 2.5, 1.5, 1.0: floors 2, 1, 1, the one left over to the first largest remainder
    assert [int(val[source == s].sum()) for s in range(3)] == [3, 1, 1]
    eff = np.ones(400, np.int64)
    source = np.arange(400) % 2
    a = validation_split(eff, source, 2, SplitConfig(fraction=0.1), 0)
    assert int(a.sum()) == 40 and int(a[source == 0].sum()) == 20
    assert validation_split(eff, source, 2, SplitConfig(fraction=0.1), 1).tolist() != a.tolist()


def test_validation_split_refuses_empty_or_everything() -> None:
    eff = np.array([3, 0, 4, 5], np.int64)  # 3 kept documents
    src = np.zeros(4, np.int64)
    with pytest.raises(MixError, match="is no document"):
        validation_split(eff, src, 1, SplitConfig(fraction=0.1), 0)
    with pytest.raises(MixError, match="leave nothing to train on"):
        validation_split(eff, src, 1, SplitConfig(docs=3), 0)
    assert int(validation_split(eff, src, 1, SplitConfig(docs=2), 0).sum()) == 2


def test_assign_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("a1.jsonl", "a2.jsonl", "sub/b1.jsonl", "sub/b2.jsonl", "c.txt"):
        (tmp_path / name).write_text('{"text": "x"}\n')
    monkeypatch.chdir(tmp_path)
    files = [str(tmp_path / f) for f in ("a1.jsonl", "a2.jsonl", "c.txt", "sub/b1.jsonl", "sub/b2.jsonl")]
    srcs = (Source("a", ("a*.jsonl",), 1.0), Source("b", ("sub",), 1.0),
            Source("c", ("c.txt", str(tmp_path / "c.txt")), 1.0))  # one file named twice in one source
    assert assign_sources(files, srcs).tolist() == [0, 0, 2, 1, 1]
    clash = (Source("a", ("a1.jsonl", "sub"), 1.0), Source("b", ("sub/b2.jsonl",), 1.0))
    with pytest.raises(ValueError, match=r"b2\.jsonl is in two mix sources, 'a' and 'b'; give each "
                                         r"file to one source"):
        assign_sources(files, clash)


@pytest.mark.parametrize("item,expected", [
    ("data/general.jsonl=0.3", ("data/general.jsonl", 0.3)),
    ("a=b.jsonl=2", ("a=b.jsonl", 2.0)),  # the weight is after the last '='
    ("x.jsonl=1e-3", ("x.jsonl", 0.001)),
])
def test_parse_mix(item: str, expected: tuple[str, float]) -> None:
    assert parse_mix(item) == expected


@pytest.mark.parametrize("item,message", [
    ("general.jsonl", r"expected PATH=WEIGHT, e\.g\. --mix data/general\.jsonl=0\.3"),
    ("=0.5", "expected PATH=WEIGHT"),
    ("a.jsonl=heavy", r"the weight 'heavy' is not a number"),
    ("a.jsonl=", r"the weight '' is not a number"),
])
def test_parse_mix_errors(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mix(item)


@pytest.mark.parametrize("kw,message", [
    ({"tokens": -1}, "--mix-tokens must be >= 0"),
    ({"tokens": 1.5}, "--mix-tokens must be >= 0"),
    ({"max_repeat": 0.5}, "--max-repeat must be between 1 and 1000"),
    ({"max_repeat": 1001}, "--max-repeat must be between 1 and 1000"),
    ({"seed": -1}, "--mix-seed must be a non-negative integer"),
    ({"seed": 0.5}, "--mix-seed must be a non-negative integer"),
    ({"sources": (Source("a", ("x",), 1.0), Source("a", ("y",), 1.0))},
     "mix source names must be unique: a appear twice"),
    ({"sources": tuple(Source(f"s{i}", ("x",), 1.0) for i in range(256))},
     "a mix holds at most 255 sources, got 256"),
])
def test_mix_config_validation(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MixConfig(**kw)


def test_mix_config_accepts_its_bounds() -> None:
    assert not MixConfig().on
    assert MixConfig(max_repeat=1).max_repeat == 1 and MixConfig(max_repeat=1000).max_repeat == 1000
    full = MixConfig(sources=tuple(Source(f"s{i}", ("x",), 1.0) for i in range(255)))
    assert full.on and len(full.sources) == 255


@pytest.mark.parametrize("kw,message", [
    ({"name": ""}, "a mix source needs a name"),
    ({"paths": ()}, "mix source 'a' has no paths"),
    ({"weight": 0}, "weight must be a positive number"),
    ({"weight": -1.0}, "weight must be a positive number"),
    ({"weight": float("nan")}, "weight must be a positive number"),
    ({"weight": float("inf")}, "weight must be a positive number"),
    ({"weight": True}, "weight must be a positive number"),
    ({"weight": "1"}, "weight must be a positive number"),
])
def test_source_validation(kw: dict, message: str) -> None:
    args = {"name": "a", "paths": ("a.jsonl",), "weight": 1.0, **kw}
    with pytest.raises(ValueError, match=re.escape(message)):
        Source(**args)


@pytest.mark.parametrize("kw,message", [
    ({"fraction": -0.1}, "--val-fraction must be in [0, 1)"),
    ({"fraction": 1.0}, "--val-fraction must be in [0, 1)"),
    ({"docs": -1}, "--val-docs must be >= 0"),
    ({"docs": 2.5}, "--val-docs must be >= 0"),
    ({"fraction": 0.1, "docs": 5}, "give --val-fraction or --val-docs, not both"),
])
def test_split_config_validation(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SplitConfig(**kw)


def test_split_config_on() -> None:
    assert not SplitConfig().on
    assert SplitConfig(fraction=0.01).on and SplitConfig(docs=1).on


def test_effective_tokens() -> None:
    lengths = np.array([0, 5, 64, 200])
    assert effective_tokens(lengths, 64, truncate=False).tolist() == [0, 5, 64, 200]
    assert effective_tokens(lengths, 64, truncate=True).tolist() == [0, 5, 64, 64]
