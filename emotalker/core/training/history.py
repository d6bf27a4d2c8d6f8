"""A training run's per-step history, thinned for the avatar manifest (the report's training curves)."""

from __future__ import annotations

MANIFEST_POINTS = 400


def thinned_history(history: list[dict], limit: int = MANIFEST_POINTS) -> list[dict]:
    """At most `limit` evenly spaced entries of `history`, the first and last kept: a 30,000-step run
    records 3,000 entries, which would make avatar.json, read by every command, 200 kB."""
    if len(history) <= limit:
        return [dict(h) for h in history]
    last = len(history) - 1
    picks = sorted({round(i * last / (limit - 1)) for i in range(limit)})
    return [dict(history[i]) for i in picks]
