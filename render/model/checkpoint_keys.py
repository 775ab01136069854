"""One wording for every strict checkpoint check (DiT, VAE, umT5): which keys are missing,
unexpected or mis-shaped, listed briefly enough to read but with the total count."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def short_list(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown}{f', … ({len(items)} in all)' if len(items) > limit else ''}"


def key_mismatches(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]) -> list[str]:
    """Problems between expected and found {key: shape}; empty when they agree exactly."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [
        f"{k} {list(found[k])} (expected {list(expected[k])})"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {short_list(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes: {short_list(misshaped)}")
    return problems
