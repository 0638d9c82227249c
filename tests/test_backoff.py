"""The one backoff rule (archloop.clients.backoff_delays) of the controller's peer calls and outbox."""

import itertools

from archloop.clients import backoff_delays


def test_delays_double_from_the_first_and_stay_at_the_cap_forever() -> None:
    delays = backoff_delays(0.5, maximum=10.0)
    assert list(itertools.islice(delays, 7)) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    # an outage of days keeps yielding the cap (no overflow from an ever-growing exponent)
    assert {next(delays) for _ in range(100_000)} == {10.0}
