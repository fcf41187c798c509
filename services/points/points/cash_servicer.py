"""Points + cash RPCs: the prepay of a redemption's cash part and the WeChat Pay notifications."""

from __future__ import annotations

from mall.points.v1 import points_service_pb2 as pb

from .cash import CashPayments
from .messages import redemption_name


class CashRpcs:
    cash: CashPayments

    async def PayRedemption(self, request, context):
        member_id, rid = redemption_name(request.name)
        p = await self.cash.prepay(member_id, rid)
        return pb.PayRedemptionResponse(app_id=p["appId"], time_stamp=p["timeStamp"], nonce_str=p["nonceStr"],
                                        package=p["package"], sign_type=p["signType"], pay_sign=p["paySign"])

    async def HandleWechatPayNotification(self, request, context):
        message = await self.cash.handle_notification(
            timestamp=request.wechatpay_timestamp, nonce=request.wechatpay_nonce,
            signature=request.wechatpay_signature, serial=request.wechatpay_serial, body=request.body)
        return pb.HandleWechatPayNotificationResponse(code="SUCCESS", message=message)
