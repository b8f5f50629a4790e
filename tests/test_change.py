"""The change-of-pace test: log-rank scores for censored songs and the strongest split.

Plain synchronous tests (pure arithmetic, no event loop).
"""

from __future__ import annotations

import itertools
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from aimlmusic._change import MIN_SURVIVAL, logrank_score, strongest_split
from aimlmusic._estimator import CHANGE_Z


@settings(max_examples=200, deadline=None)
@given(
    drops=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12),
    polls=st.integers(min_value=1, max_value=12),
)
def test_a_song_s_score_has_mean_zero_whatever_its_polls(drops: list[float], polls: int) -> None:
    """For any survival curve and any polls, the scores of the outcomes a song can show
    (finished between two polls, or still running), weighed by their chances, sum to 0."""
    # A survival curve at the polls: 1 at the song's reference, then falling.
    total = sum(drops) or 1.0
    survival = [1.0, *(1.0 - s / total for s in itertools.accumulate(drops))][: polls + 1]
    survival = [max(MIN_SURVIVAL, s) for s in survival]
    mean = sum(
        (after - by) * logrank_score(after, by) for after, by in itertools.pairwise(survival)
    )
    mean += survival[-1] * logrank_score(survival[-1], None)  # still running at the last poll
    assert math.isclose(mean, 0.0, abs_tol=1e-9)


def test_scores_order_songs_by_how_long_they_took() -> None:
    """A song finishing early scores near 1, one finishing late or still running late
    scores below 0, and one found finished at a late first poll scores near 0."""
    early = logrank_score(1.0, 0.9)
    late = logrank_score(0.2, 0.1)
    running_late = logrank_score(0.2, None)
    vague = logrank_score(1.0, 0.01)
    assert early > 0.9
    assert late < 0
    assert running_late < 0
    assert 0 <= vague < 0.1


def test_a_straggler_past_every_song_seen_scores_as_rare_not_impossible() -> None:
    """A song finishing where the estimate has no song left scores log(MIN_SURVIVAL) + 1."""
    assert math.isclose(logrank_score(0.0, 0.0), math.log(MIN_SURVIVAL) + 1.0)
    assert math.isfinite(logrank_score(1e-30, None))


def test_the_strongest_split_is_where_the_songs_changed() -> None:
    """60 songs scoring about +0.5 then 20 scoring about -1 (they took longer): the split is
    at song 60, far past CHANGE_Z, negative."""
    rng = random.Random(1)
    scores = [rng.gauss(0.5, 0.3) for _ in range(60)] + [rng.gauss(-1.0, 0.3) for _ in range(20)]
    split, z = strongest_split(scores, 10, len(scores) - 5)
    assert split == 60
    assert z < -CHANGE_Z


def test_a_faster_service_gives_a_positive_statistic() -> None:
    """Later songs scoring higher (they finished sooner) give a positive statistic."""
    scores = [-0.5] * 40 + [0.9] * 10
    split, z = strongest_split(scores, 5, 45)
    assert split == 40
    assert z > CHANGE_Z


def test_songs_that_started_together_stay_on_one_side_of_the_split() -> None:
    """Two groups of 30 songs, each started at one time, the first scoring +0.5 for 10 songs
    then -1: the strongest split lies inside the first group, but it can only fall where
    the start time moves on (song 30)."""
    scores = [0.5] * 10 + [-1.0] * 50
    starts = [0.0] * 30 + [100.0] * 30
    assert strongest_split(scores, 5, 55)[0] == 10
    split, z = strongest_split(scores, 5, 55, starts)
    assert split == 30
    assert z < 0


def test_songs_in_random_order_rarely_pass_the_bar() -> None:
    """200 shuffles of 100 scores from one law: the strongest split passes CHANGE_Z in at
    most 1 (a steady service keeps its songs)."""
    rng = random.Random(2)
    scores = [rng.choice((1.0, 0.5, -0.2, -1.5)) + rng.gauss(0, 0.2) for _ in range(100)]
    passed = 0
    for _ in range(200):
        rng.shuffle(scores)
        passed += abs(strongest_split(scores, 10, 95)[1]) >= CHANGE_Z
    assert passed <= 1


def test_no_split_or_no_spread_says_nothing() -> None:
    """An empty range of splits, or scores that are all equal, give a statistic of 0."""
    assert strongest_split([0.1, 0.2, 0.3], 3, 2) == (3, 0.0)
    assert strongest_split([0.4] * 20, 2, 18)[1] == 0.0
    assert strongest_split([], 0, 0)[1] == 0.0


@settings(max_examples=500, deadline=None)
@given(
    score=st.floats(min_value=-1e150, max_value=1e150),  # scores lie in [-7, 1]; squares fit
    count=st.integers(min_value=1, max_value=1000),
)
def test_equal_scores_never_make_a_change_whatever_the_rounding(score: float, count: int) -> None:
    """Any number of equal scores give z = 0, though their mean may be off by rounding."""
    assert strongest_split([score] * count, 1, count - 1)[1] == 0.0
