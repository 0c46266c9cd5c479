"""Statistics: the supervisor dashboard (agency-scoped) and the public transparency table.

The public table is need × outcome group with row, column and grand totals. Cells from 1
to ``MIN_CELL - 1`` are suppressed (primary suppression); then, so that no suppressed
value can be recovered by subtracting published values from a published total, every row
and column equation (its cells plus its total) that has exactly one suppressed entry gets
a second one (complementary suppression), repeated until stable. ``suppress`` is pure.
"""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from servicekit import events

from .tables import referrals, sla_breaches

MIN_CELL = 11
PUBLIC_GROUPS = ("open", "completed", "not_completed")
Grid = list[list[int]]


def _lines(rows: int, cols: int) -> list[list[tuple[int, int]]]:
    """Every additive equation of a grid whose last row and column are totals."""
    return ([[(r, c) for c in range(cols)] for r in range(rows)]
            + [[(r, c) for r in range(rows)] for c in range(cols)])


def suppress(grid: Grid, min_cell: int = MIN_CELL) -> list[list[bool]]:
    """Which entries of ``grid`` (cells + totals row/column, totals last) to withhold."""
    rows, cols = len(grid), len(grid[0]) if grid else 0
    hidden = [[0 < grid[r][c] < min_cell for c in range(cols)] for r in range(rows)]
    changed = True
    while changed:
        changed = False
        for line in _lines(rows, cols):
            if sum(hidden[r][c] for r, c in line) != 1:
                continue
            inner, margin = line[:-1], line[-1]
            options = [(grid[r][c] == 0, grid[r][c], (r, c)) for r, c in inner
                       if not hidden[r][c]]
            r, c = min(options)[2] if options else margin
            if hidden[r][c]:  # only the margin was left and it is the hidden one
                r, c = min((grid[a][b], (a, b)) for a, b in inner)[1]
            hidden[r][c] = True
            changed = True
    return hidden


def _group(status: str) -> str:
    if status == "completed":
        return "completed"
    if status in ("failed", "cancelled"):
        return "not_completed"
    return "open"


def public_table(session: Session) -> dict[str, Any]:
    counts = Counter(
        (need, _group(status)) for need, status in session.execute(
            select(referrals.c.need, referrals.c.status)
            .where(referrals.c.status != "entered_in_error")))
    needs = list(events.NEEDS)
    grid = [[counts[(n, g)] for g in PUBLIC_GROUPS] for n in needs]
    grid = [row + [sum(row)] for row in grid]
    grid.append([sum(row[i] for row in grid) for i in range(len(PUBLIC_GROUPS) + 1)])
    hidden = suppress(grid)

    def cell(r: int, c: int) -> int | None:
        return None if hidden[r][c] else grid[r][c]

    rows = [{"need": n, **{g: cell(i, j) for j, g in enumerate(PUBLIC_GROUPS)},
             "total": cell(i, len(PUBLIC_GROUPS))} for i, n in enumerate(needs)]
    last = len(needs)
    return {"rows": rows,
            "totals": {**{g: cell(last, j) for j, g in enumerate(PUBLIC_GROUPS)},
                       "total": cell(last, len(PUBLIC_GROUPS))},
            "suppression": {"min_cell": MIN_CELL, "method": "primary + complementary",
                            "note": "null means withheld to protect small groups"}}


def _seconds(pairs: Iterable[tuple[datetime | None, datetime | None]]) -> list[float]:
    return sorted((b - a).total_seconds() for a, b in pairs if a is not None and b is not None)


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "median_s": None, "p90_s": None}
    p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
    return {"count": len(values), "median_s": statistics.median(values), "p90_s": p90}


def _block(rows: Sequence[Any], breaches: Counter[str]) -> dict[str, Any]:
    by_status = Counter(r.status for r in rows)
    closed = by_status["completed"] + by_status["failed"] + by_status["cancelled"]
    return {
        "total": len(rows), "by_status": dict(by_status),
        "completion_rate": by_status["completed"] / closed if closed else None,
        "time_to_accept": _summary(_seconds((r.created_at, r.accepted_at) for r in rows)),
        "time_to_first_contact": _summary(_seconds((r.accepted_at, r.first_contact_at)
                                                   for r in rows)),
        "sla_breaches": sum(breaches[r.id] for r in rows),
        "unmatched": by_status["unmatched"],
    }


def agency_stats(session: Session, agency: str, since: datetime | None,
                 until: datetime | None) -> dict[str, Any]:
    cond = [referrals.c.agency_id == agency]
    if since is not None:
        cond.append(referrals.c.created_at >= since)
    if until is not None:
        cond.append(referrals.c.created_at < until)
    rows = session.execute(select(referrals.c.id, referrals.c.need, referrals.c.urgency,
                                  referrals.c.geohash, referrals.c.status,
                                  referrals.c.created_at, referrals.c.accepted_at,
                                  referrals.c.first_contact_at).where(*cond)).all()
    breach_rows = session.execute(select(sla_breaches.c.referral_id, sla_breaches.c.sla,
                                         func.count()).join(referrals, referrals.c.id ==
                                                            sla_breaches.c.referral_id)
                                  .where(*cond).group_by(sla_breaches.c.referral_id,
                                                         sla_breaches.c.sla)).all()
    per_referral: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    for rid, sla, n in breach_rows:
        per_referral[rid] += n
        by_kind[sla] += n
    groups: dict[str, dict[str, list[Any]]] = {k: defaultdict(list) for k in
                                               ("need", "urgency", "area", "week")}
    for r in rows:
        groups["need"][r.need].append(r)
        groups["urgency"][r.urgency].append(r)
        groups["area"][r.geohash[:4]].append(r)  # ~20 km cells
        iso = r.created_at.isocalendar()
        groups["week"][f"{iso[0]}-W{iso[1]:02d}"].append(r)
    unmatched = sorted((r for r in rows if r.status == "unmatched"), key=lambda r: r.created_at)
    return {
        "agency_id": agency, **_block(rows, per_referral),
        "sla_breaches_by_kind": dict(by_kind),
        "unmatched_queue": [{"id": r.id, "need": r.need, "urgency": r.urgency,
                             "created_at": r.created_at} for r in unmatched[:100]],
        **{f"by_{k}": {key: _block(v, per_referral) for key, v in sorted(g.items())}
           for k, g in groups.items()},
    }
