"""FasterPath: per batch size, each way is timed (its very first run ever is warm-up), the faster one is kept, and
the others are re-timed now and then so a change in the machine's load can flip the choice."""

from __future__ import annotations

from anima.generation.faster_path import FasterPath


def _drive(path: FasterPath, key: int, cost: dict[str, float], calls: int) -> list[str]:
    picked = []
    for _ in range(calls):
        way = path.pick(key)
        path.record(key, way, cost[way])
        picked.append(way)
    return picked


def test_each_way_is_timed_then_the_faster_one_is_kept():
    path = FasterPath(("eager", "compiled"), trials=3, reprobe=1000)
    picked = _drive(path, 4, {"eager": 2.2, "compiled": 1.6}, 30)
    assert picked[:8].count("eager") == 4 and picked[:8].count("compiled") == 4  # 1 warm-up + 3 timed, interleaved
    assert path.best(4) == "compiled" and set(picked[8:]) == {"compiled"}


def test_batch_sizes_are_judged_separately():
    path = FasterPath(("eager", "compiled"), trials=2, reprobe=1000)
    _drive(path, 2, {"eager": 1.4, "compiled": 1.9}, 10)
    _drive(path, 8, {"eager": 2.1, "compiled": 1.9}, 10)
    assert (path.best(2), path.best(8)) == ("eager", "compiled")


def test_the_loser_is_retimed_and_a_changed_machine_flips_the_choice():
    path = FasterPath(("eager", "compiled"), trials=2, reprobe=5)
    _drive(path, 3, {"eager": 1.0, "compiled": 2.0}, 20)
    assert path.best(3) == "eager"
    picked = _drive(path, 3, {"eager": 3.0, "compiled": 2.0}, 40)  # eager got slower (say, the machine is busy)
    assert path.best(3) == "compiled"
    assert picked[-10:].count("eager") == 2  # the loser, once every `reprobe` calls


def test_a_fixed_way_is_always_used():
    path = FasterPath(("eager", "compiled"))
    path.fixed = "eager"
    assert _drive(path, 8, {"eager": 9.0, "compiled": 1.0}, 5) == ["eager"] * 5


def test_a_burst_of_slow_calls_does_not_hand_the_steps_to_the_slower_way():
    """Noise only adds time: two slow calls of the faster way (the machine busy for a moment) keep it chosen."""
    path = FasterPath(("native", "compiled"), trials=3, reprobe=1000)
    _drive(path, 2, {"native": 1.1, "compiled": 1.5}, 10)
    for _ in range(2):
        assert path.pick(2) == "native"
        path.record(2, "native", 4.0)
    assert _drive(path, 2, {"native": 1.1, "compiled": 1.5}, 20) == ["native"] * 20


def test_a_lead_lost_to_a_longer_burst_comes_back_within_a_few_calls():
    """Three slow calls in a row (the whole window) hand the lead to the slower way; the old leader is re-timed
    after ``first_reprobe`` calls, not ``reprobe``, and takes it back; then the re-timing backs off again."""
    path = FasterPath(("native", "compiled"), trials=3, reprobe=256, first_reprobe=8)
    _drive(path, 2, {"native": 0.7, "compiled": 1.3}, 10)
    for _ in range(3):
        way = path.pick(2)
        path.record(2, way, 4.0 if way == "native" else 1.3)
    picked = _drive(path, 2, {"native": 0.7, "compiled": 1.3}, 300)
    assert picked.index("native") <= 8
    assert picked[:10].count("compiled") <= 9 and picked[10:].count("compiled") <= 6  # probes at 8, 16, 32, ...


def test_single_steps_are_compared_within_a_band_of_positions():
    """Attention grows with the cache: a kernel timed late in one reply must not lose to one timed early in the
    next. Keyed by step_key, the 1.3x slower kernel only runs its trials and rare re-timings."""
    from anima.generation.compiled import step_key

    path = FasterPath(("native", "compiled"), trials=3, reprobe=1024)
    picked = []
    for _reply in range(6):
        for pos in range(2, 256):
            key = step_key(2, pos)
            way = path.pick(key)
            path.record(key, way, (1.0 if way == "native" else 1.3) * (1 + pos / 64))
            picked.append(way)
    later = picked[len(picked) // 2:]  # after every band's trials
    assert step_key(2, 250) != step_key(2, 20) and later.count("compiled") <= 8
