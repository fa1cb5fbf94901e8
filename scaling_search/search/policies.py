"""Which allocation policy a space asks for: racing, synchronous halving (``pruning``) or uniform.

Apart from the rounds driver because the policies import its types (``rounds.Step``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..scaling import Candidate
from ..space import SearchSpace
from .rounds import Policy, Uniform


def policy_for(space: SearchSpace, candidates: Sequence[Candidate]) -> Policy:
    """The space's allocation: racing, synchronous halving (``pruning``) or uniform."""
    reference = next((c for c in candidates if c.is_paper), None)
    if space.racing.enabled:
        from .racing import Racing

        return Racing(space, candidates, reference=reference)
    if space.pruning.enabled:
        from .halving import Halving

        return Halving(space, candidates, reference=reference)
    return Uniform(space, candidates)
