"""One prediction from the K members of DENI's delayed ensemble.

Ties favour the main model (member 0): it is the one trained without noise, so it is the better guess
when the copies disagree among themselves as much as with it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence


def default_normalise(text: str) -> str:
    """Outputs that differ only in surrounding whitespace or case count as the same answer."""
    return text.strip().lower()


def vote(outputs: Sequence[str], *, normalise: Callable[[str], str] = default_normalise) -> int:
    """The index of the member whose (normalised) output has the most votes. A tie goes to member 0 if
    its answer is among the tied, else to the lowest-indexed member with a tied answer."""
    if not outputs:
        raise ValueError("vote over no outputs")
    keys = [normalise(output) for output in outputs]
    counts = Counter(keys)
    best = max(counts.values())
    tied = {key for key, count in counts.items() if count == best}
    return next(index for index, key in enumerate(keys) if key in tied)  # member 0 first, then lowest


def vote_rows(
    per_member: Sequence[Sequence[str]], *, normalise: Callable[[str], str] = default_normalise
) -> list[str]:
    """Row by row, the winning member's *original* output (not its normalised form, so the metrics see
    exactly what a model generated). per_member[k][i] is member k's output for row i."""
    if not per_member:
        raise ValueError("vote_rows over no members")
    rows = len(per_member[0])
    for index, outputs in enumerate(per_member):
        if len(outputs) != rows:
            raise ValueError(f"member {index} has {len(outputs)} outputs, member 0 has {rows}")
    winners: list[str] = []
    for row in range(rows):
        outputs = [member[row] for member in per_member]
        winners.append(outputs[vote(outputs, normalise=normalise)])
    return winners


def mean_vote(values: Sequence[float | None]) -> float | None:
    """Regression: the mean of the members' parsed values (None = unparseable, skipped); None when no
    member produced a value. math.fsum keeps the mean independent of the members' order."""
    parsed = [value for value in values if value is not None]
    if not parsed:
        return None
    return math.fsum(parsed) / len(parsed)

