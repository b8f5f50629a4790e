"""How fast a batch may submit songs: no faster than the request budget can serve them.

Every song costs a submission and its polls, so a budget that sustains ``R`` requests a
second serves at most ``R / c`` songs a second, ``c`` being what a song costs. Songs
submitted faster than that finish faster than their polls can be sent: polls wait, and
songs are noticed late. Against a server that counts a sliding minute that never happens
in a batch (a minute's worth of requests may go at once, so a wave of songs submitted
together is polled together). Against one that counts with a small token bucket it happens
every wave: songs that finish together need more polls at once than the bucket holds, and
since a finished song's slot is refilled at once, the next wave is as bunched as the last.

:class:`SubmissionPace` is a token bucket of songs derived from the budget's own: refilled
at the budget's rate divided by a song's cost, holding a share of the budget's burst
allowance divided by the same. For a policy that plans its polls within the budget
(:class:`~aimlmusic.LearnedPolling`) the share is ``WAVE_SHARE``, half: while the budget
allows a minute's burst of 120, 12 songs go at once (at five requests a song) and the rest
at the pace the budget serves, so that a wave whose slots come free together spreads
out. For any other policy it is ``UNPLANNED_WAVE_SHARE``, all of it: a whole wave goes at
once. Once 429s have shown that the server takes small bursts, songs are submitted one at a
time at the pace their requests can be served, so that waves spread out and their polls go
when they are due.

Never slower, though, than songs leave the batch's slots (``slots`` per time in flight): a
policy whose polls do not shrink with the budget (a fixed interval) costs more requests
than the budget serves, and pacing it below the slots' turnover would only keep slots
empty; at that turnover its waves still spread. A song's cost and its time in flight are
learned from the songs that ended.
"""

from __future__ import annotations

import math

from . import _limits
from ._ratelimit import Budget

__all__ = ["SubmissionPace"]

#: Requests a song costs before any has ended: a submission and the four or so polls the
#: default policy spends on the documented 50-60 s at the default limits.
PRIOR_REQUESTS_PER_SONG = 5.0
#: A song's time in flight (submission to seen finished) before any has ended: the
#: documented 50-60 s, noticed a little late.
PRIOR_TIME_IN_FLIGHT = sum(_limits.DOCUMENTED_DURATION_RANGE) / 2 + 1.0
#: Songs' worth of those priors, and how many recent songs the learned figures follow (a
#: wave of the default twenty in flight): a policy or a service that changes is followed in
#: a wave.
COST_MEMORY = 20.0
#: Share of the budget's burst allowance that a wave of submissions may take at once, for a
#: policy that plans its polls within the budget: half, so that a wave whose slots come free
#: together leaves over a few seconds and its polls do not crowd one minute (less lag, about
#: 1 % more makespan; measured in docs/polling.md, "The request budget").
WAVE_SHARE = 0.5
#: The same for any other policy: all of it. Its polls do not shrink with the budget, so
#: a wave held back would only leave slots empty.
UNPLANNED_WAVE_SHARE = 1.0
#: Whether, for a policy that plans its polls within the budget, the next song lets as many
#: polls go first as were waiting for the budget when its slot came free (1, the default:
#: first come, first served) or goes first (0).
SONGS_WAIT_FOR_EARLIER_POLLS = 1


class SubmissionPace:
    """A token bucket of song submissions for a batch of ``slots`` songs in flight, sized
    and refilled from a request budget's burst allowance and rate and what a song has cost
    (see the module's doc)."""

    def __init__(self, slots: int, wave_share: float = UNPLANNED_WAVE_SHARE) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots!r}")
        self._slots = slots
        self._wave_share = wave_share
        self._cost = PRIOR_REQUESTS_PER_SONG
        self._time_in_flight = PRIOR_TIME_IN_FLIGHT
        self._ended = 0
        self._tokens = math.inf  # full (whatever the size) until the first submission
        self._tokens_at: float | None = None

    @property
    def requests_per_song(self) -> float:
        """What a song has cost lately: a running mean over the last ``COST_MEMORY`` songs."""
        return self._cost

    @property
    def time_in_flight(self) -> float:
        """How long a song has lately stayed in flight, from its submission until it ended
        (seconds; a running mean as for :attr:`requests_per_song`)."""
        return self._time_in_flight

    def song_ended(self, requests: int, time_in_flight: float) -> None:
        """A submitted song ended (completed, failed or given up) after ``requests``
        requests sent for it (every attempt: its submission, polls and their retries) and
        ``time_in_flight`` seconds."""
        self._ended += 1
        weight = 1.0 / min(self._ended + 1.0, COST_MEMORY)  # the prior counts as one song
        self._cost += (max(1.0, requests) - self._cost) * weight
        self._time_in_flight += (max(0.0, time_in_flight) - self._time_in_flight) * weight

    def delay(self, budget: Budget, now: float) -> float:
        """Seconds from ``now`` until the next song may be submitted (0: now)."""
        rate, size = self._shape(budget)
        tokens = self._refilled(now, rate, size)
        # Within a rounding error of a whole token is a token (as in the request budget):
        # waiting for the last 1e-15 would be a sleep too short for the clock to move.
        return 0.0 if tokens >= 1.0 - 1e-9 else (1.0 - tokens) / rate

    def take(self, budget: Budget, now: float) -> None:
        """Count one submission at ``now`` (after :meth:`delay` said it may go)."""
        rate, size = self._shape(budget)
        self._tokens = max(0.0, self._refilled(now, rate, size) - 1.0)
        self._tokens_at = now

    def _shape(self, budget: Budget) -> tuple[float, float]:
        """Songs per second and the bucket's size in songs, from the budget now."""
        served = max(1.0, budget.effective_rate) / 60.0 / self._cost
        # A song stays in flight for a round trip at least: never a division by zero.
        turnover = self._slots / max(1.0, self._time_in_flight)
        return max(served, turnover), max(1.0, self._wave_share * budget.burst / self._cost)

    def _refilled(self, now: float, rate: float, size: float) -> float:
        elapsed = 0.0 if self._tokens_at is None else max(0.0, now - self._tokens_at)
        return min(size, self._tokens + elapsed * rate)
