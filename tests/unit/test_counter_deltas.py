from otelbpf.signals.counters import CounterDeltas
from otelbpf.signals.registry import Registry


def test_totals_become_increments_once_per_series():
    registry = Registry()
    dropped = registry.counter("otelbpf.sensor.dropped")
    deltas = CounterDeltas()
    assert deltas.report(dropped, 23, {"sensor": "process", "reason": "ring_buffer_full"}) == 23
    assert deltas.report(dropped, 23, {"sensor": "process", "reason": "ring_buffer_full"}) == 0  # nothing new
    assert deltas.report(dropped, 30, {"sensor": "process", "reason": "ring_buffer_full"}) == 7
    assert deltas.report(dropped, 5, {"sensor": "http", "reason": "ring_buffer_full"}) == 5  # another series
    assert dropped.value(sensor="process", reason="ring_buffer_full") == 30
    assert dropped.value(sensor="http", reason="ring_buffer_full") == 5


def test_a_total_that_went_down_is_a_new_run():
    registry = Registry()
    counter = registry.counter("c")
    deltas = CounterDeltas()
    deltas.report(counter, 41, {"reason": "x"})
    assert deltas.report(counter, 3, {"reason": "x"}) == 3  # the map was made again: 3 new
    assert counter.value(reason="x") == 44


def test_the_same_attributes_in_another_order_are_one_series():
    registry = Registry()
    counter = registry.counter("c")
    deltas = CounterDeltas()
    deltas.report(counter, 9, {"a": "1", "b": "2"})
    assert deltas.report(counter, 11, {"b": "2", "a": "1"}) == 2


def test_sources_adding_to_one_series_are_kept_apart_and_forgotten_on_reuse():
    registry = Registry()
    matches = registry.counter("otelbpf.security.matches")
    deltas = CounterDeltas()
    policy = {"otelbpf.security.policy": "p"}
    deltas.report(matches, 7, policy, source=1)  # two rules of one policy
    deltas.report(matches, 4, policy, source=2)
    deltas.report(matches, 9, policy, source=1)
    assert matches.value(policy) == 13
    deltas.forget(2)  # slot 2 now counts for a new rule, from zero
    assert deltas.report(matches, 1, policy, source=2) == 1 and matches.value(policy) == 14
