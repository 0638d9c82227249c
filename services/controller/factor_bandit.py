"""Which factor a factor / region candidate edits, when `generation.factor_policy: bandit` (issue 36):
Thompson sampling over the experiment's own outcomes per factor.

    arms(rows, factors)                     per factor: decided candidates (trials) and their reward
    choose(arms, seed, cycle, index)        (factor, what was drawn) for one candidate

Reward of a decided candidate that edited factor f: 1 for a wiring-new admission (its wiring hash was
recorded and is not the corpus's, an admitted program's or an earlier candidate's of its cycle), 0.5
for any other admission, 0 for a rejection. Each factor's posterior is Beta(1 + reward, 1 + trials −
reward); candidate k of cycle c draws once from every factor's posterior with the seed
`<seed>:<c>:<k>:factor` and takes the highest draw. The arms are read from the ledger as the cycle
begins (candidates of earlier cycles only), so a controller restarted mid-cycle draws the same factors
for the candidates it has not generated yet: the bandit's state is the ledger, nothing else.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

REWARD_ADMITTED = 0.5
REWARD_WIRING_NEW = 1.0


@dataclass(frozen=True)
class Arm:
    factor: str
    trials: int
    reward: float

    @property
    def mean(self) -> float:
        """The posterior mean of the reward."""
        return (1 + self.reward) / (2 + self.trials)


def reward(admitted: bool, wiring_recorded: bool, wiring_known_as: str) -> float:
    if not admitted:
        return 0.0
    return REWARD_WIRING_NEW if wiring_recorded and not wiring_known_as else REWARD_ADMITTED


def arms(outcomes: Iterable[tuple[str, float]], factors: list[str]) -> dict[str, Arm]:
    """Each factor's arm from (factor, reward) of decided candidates; factors outside the list are
    ignored, listed factors with no outcome start at Beta(1, 1)."""
    trials = dict.fromkeys(factors, 0)
    rewards = dict.fromkeys(factors, 0.0)
    for factor, value in outcomes:
        if factor in trials:
            trials[factor] += 1
            rewards[factor] += value
    return {f: Arm(f, trials[f], rewards[f]) for f in factors}


def choose(state: dict[str, Arm], seed: int, cycle: int, index: int) -> tuple[str, str]:
    """(factor, a line saying what was drawn) for candidate `index` of `cycle`."""
    rng = random.Random(f"{seed}:{cycle}:{index}:factor")
    draws = {f: rng.betavariate(1 + arm.reward, 1 + arm.trials - arm.reward) for f, arm in state.items()}
    best = max(draws, key=lambda f: draws[f])
    listed = ", ".join(f"{f} {a.reward:g}/{a.trials}" for f, a in state.items())
    return best, f"thompson {draws[best]:.3f}: {listed}"
