"""The ledger invariant, verified set-wise in SQL for every account.

For every member: the cached ``available`` and ``pending`` equal the sums of
their ledger entries, ``available`` equals what the member's lots still hold,
no balance or lot is negative or above what was earned; for every lot, its
``remaining`` equals the sum of its moves; for every entry, its available
change equals the sum of its lot moves; for every item, stock is not negative
and its redeemed count equals its live redemptions (not cancelled, not failed). ``python -m points check``
runs it against ``POINTS_DATABASE_URL`` (exit status 1 on a violation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mall.points.v1 import points_service_pb2 as pb

from .models import Account, Entry, Item, Lot, LotMove, Redemption


@dataclass
class LedgerReport:
    accounts: int = 0
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def check_ledger(engine: AsyncEngine, limit: int = 50) -> LedgerReport:
    report = LedgerReport()
    led = (select(Entry.member_id.label("member_id"), func.sum(Entry.available_delta).label("available"),
                  func.sum(Entry.pending_delta).label("pending"))
           .group_by(Entry.member_id).subquery())
    lots = (select(Lot.member_id.label("member_id"), func.sum(Lot.remaining).label("remaining"))
            .group_by(Lot.member_id).subquery())
    lot_moves = select(LotMove.lot_id.label("lot_id"), func.sum(LotMove.delta).label("total")).group_by(LotMove.lot_id).subquery()
    entry_moves = (select(LotMove.entry_id.label("entry_id"), func.sum(LotMove.delta).label("total"))
                   .group_by(LotMove.entry_id).subquery())
    live = (select(Redemption.item_id.label("item_id"), func.sum(Redemption.quantity).label("quantity"))
            .where(Redemption.state.notin_([pb.REDEMPTION_STATE_CANCELLED, pb.REDEMPTION_STATE_FAILED,
                                            pb.REDEMPTION_STATE_EXPIRED]))
            .group_by(Redemption.item_id).subquery())
    zero = literal(0)
    async with engine.connect() as conn:
        report.accounts = (await conn.execute(select(func.count()).select_from(Account))).scalar_one()
        report.entries = (await conn.execute(select(func.count()).select_from(Entry))).scalar_one()
        checks = [
            ("account differs from its ledger",
             select(Account.member_id, Account.available, Account.pending, led.c.available, led.c.pending)
             .outerjoin(led, led.c.member_id == Account.member_id)
             .where(or_(Account.available != func.coalesce(led.c.available, zero),
                        Account.pending != func.coalesce(led.c.pending, zero)))),
            ("ledger of a member without an account",
             select(led.c.member_id).outerjoin(Account, Account.member_id == led.c.member_id)
             .where(Account.member_id.is_(None))),
            ("account available differs from its lots",
             select(Account.member_id, Account.available, lots.c.remaining)
             .outerjoin(lots, lots.c.member_id == Account.member_id)
             .where(Account.available != func.coalesce(lots.c.remaining, zero))),
            ("negative balance", select(Account.member_id).where(or_(Account.available < 0, Account.pending < 0))),
            ("lot negative or above its amount",
             select(Lot.id).where(or_(Lot.remaining < 0, Lot.remaining > Lot.amount))),
            ("lot differs from its moves",
             select(Lot.id, Lot.remaining, lot_moves.c.total).outerjoin(lot_moves, lot_moves.c.lot_id == Lot.id)
             .where(Lot.remaining != func.coalesce(lot_moves.c.total, zero))),
            ("entry differs from its lot moves",
             select(Entry.id, Entry.available_delta, entry_moves.c.total)
             .outerjoin(entry_moves, entry_moves.c.entry_id == Entry.id)
             .where(Entry.available_delta != func.coalesce(entry_moves.c.total, zero))),
            ("item stock negative or redeemed count differs from its redemptions",
             select(Item.id, Item.stock, Item.redeemed_count, live.c.quantity)
             .outerjoin(live, live.c.item_id == Item.id)
             .where(or_(Item.stock < 0, Item.redeemed_count != func.coalesce(live.c.quantity, zero)))),
        ]
        for what, query in checks:
            for row in (await conn.execute(query.limit(limit))).all():
                report.problems.append(f"{what}: {tuple(row)}")
    return report
