"""gRPC servicer of OrdersService: validates requests and translates proto <-> domain.

No SQL and no business rule here: each RPC checks its input, resolves resource
names (ownership first), opens the transaction (through ``Idempotency.run`` for
mutations) and calls one use case of a sub-domain (``catalog``, ``cart``,
``addresses``, ``coupons``, ``checkout``, ``lifecycle``, ``payment``,
``flash_sale``, ``group_buy``, ``bargain``, ``reviews``). The RPCs are grouped by sub-domain in the
modules of this package and composed into the one servicer class here.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mall.orders.v1 import orders_service_pb2_grpc as pb_grpc
from mallkit.idempotency import Idempotency

from ..addresses import Addresses
from ..bargain import Bargains
from ..campaigns import CouponCampaigns
from ..cart import Cart
from ..catalog import Catalog
from ..checkout import Checkout
from ..coupons import Coupons
from ..flash_sale import FlashSales
from ..group_buy import GroupBuying
from ..lifecycle import Lifecycle
from ..members_client import MemberReads
from ..payment import Payment
from ..reviews import Reviews
from .cart import CartRpcs
from .catalog import CatalogRpcs
from .coupons import CouponRpcs
from .deals import BargainRpcs, ReviewRpcs
from .orders import OrderRpcs
from .promotions import FlashSaleRpcs, GroupBuyRpcs


class OrdersServicer(CatalogRpcs, CartRpcs, CouponRpcs, OrderRpcs, FlashSaleRpcs, GroupBuyRpcs, BargainRpcs,
                     ReviewRpcs, pb_grpc.OrdersServiceServicer):
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], idem: Idempotency, catalog: Catalog, cart: Cart,
                 addresses: Addresses, coupons: Coupons, campaigns: CouponCampaigns, checkout: Checkout, lifecycle: Lifecycle, payment: Payment,
                 flash_sales: FlashSales, group_buying: GroupBuying, bargains: Bargains, reviews: Reviews,
                 members: MemberReads):
        self.sessions = sessions
        self.idem = idem
        self.catalog = catalog
        self.cart = cart
        self.addresses = addresses
        self.coupons = coupons
        self.campaigns = campaigns
        self.checkout = checkout
        self.lifecycle = lifecycle
        self.payment = payment
        self.flash_sales = flash_sales
        self.group_buying = group_buying
        self.bargains = bargains
        self.reviews = reviews
        self.members = members


__all__ = ["OrdersServicer"]
