"""A member's GetProduct is answered from the replica's product cache, and every committed write
of the product or one of its SKUs (a staff edit, stock taken by an order) is read at once."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from mall.orders.v1 import orders_service_pb2 as pb
from tests.fixtures import directory, until
from tests.fixtures.orders import rid


async def _on(cache) -> bool:
    return cache.enabled


async def test_product_page_reads_follow_every_write(orders):
    cache = orders.app.catalog.product_cache
    await until(lambda: _on(cache), 30, "the product cache on")
    product = await orders.product(price_fen=2500, stock=5)
    pid, sku = int(product.name.split("/")[1]), product.skus[0].name
    get = pb.GetProductRequest(name=product.name)
    assert (await orders.stub.GetProduct(get)).skus[0].stock == 5
    assert pid in cache._entries  # the next page view comes from memory

    # A staff edit of the product (ORM) and of the SKU's price (Core UPDATE by SKU id).
    await orders.stub.UpdateProduct(pb.UpdateProductRequest(
        product=pb.Product(name=product.name, display_name="改名之后"),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]), request_id=rid()), metadata=orders.staff_md)
    assert (await orders.stub.GetProduct(get)).display_name == "改名之后"
    await orders.stub.UpdateSku(pb.UpdateSkuRequest(name=sku, price_fen=1999, request_id=rid()), metadata=orders.staff_md)
    assert (await orders.stub.GetProduct(get)).skus[0].price_fen == 1999

    # Stock taken by an order (the conditional UPDATE of the SKU row) is on the page at once.
    await orders.stub.GetProduct(get)
    assert pid in cache._entries
    md = orders.member_md(directory().new_member())
    await orders.order(md, sku, quantity=2)
    assert (await orders.stub.GetProduct(get)).skus[0].stock == 3

    # A product taken off sale is gone for members at once, still there for staff.
    await orders.stub.UpdateProduct(pb.UpdateProductRequest(
        product=pb.Product(name=product.name, status=pb.PRODUCT_STATUS_INACTIVE),
        update_mask=field_mask_pb2.FieldMask(paths=["status"]), request_id=rid()), metadata=orders.staff_md)
    try:
        await orders.stub.GetProduct(get)
        raise AssertionError("an inactive product was served to a member")
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (await orders.stub.GetProduct(get, metadata=orders.staff_md)).status == pb.PRODUCT_STATUS_INACTIVE
