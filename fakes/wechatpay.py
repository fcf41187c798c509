"""A local simulator of WeChat Pay v3 that signs and encrypts like the real one.

* ``POST /v3/pay/transactions/jsapi``: checks the merchant's ``Authorization``
  (RSA-SHA256 with the merchant key, verified with the merchant public key
  the simulator is configured with) and answers a ``prepay_id``.
* ``POST /v3/refund/domestic/refunds``: same check; idempotent on
  ``out_refund_no``; answers ``status: SUCCESS`` (or ``PROCESSING`` for the
  out_trade_nos in :attr:`WechatPaySimulator.settle_later`, as the real one
  does for refunds that settle later).
* ``POST /__sim/refunds/complete`` ``{"out_refund_no": ...}``: a PROCESSING
  refund settles: its status becomes SUCCESS and the REFUND.SUCCESS
  notification (signed and encrypted like the payment one) is POSTed to the
  refund's ``notify_url``.
* ``POST /__sim/pay`` ``{"out_trade_no": ..., "amount": optional}``: the
  buyer pays: the simulator builds the payment notification (resource
  encrypted with AES-256-GCM and the APIv3 key, body signed with the platform
  key, ``Wechatpay-*`` headers) and POSTs it to the ``notify_url`` of the
  prepay; the answer holds the notification and the merchant's HTTP status.
* ``GET /__sim/refunds``: refunds received (test control).

Tests use :meth:`WechatPaySimulator.notification` to build the signed request
and hand it to the orders service themselves (any number of times).

Run: ``python -m fakes.wechatpay --port 9200`` (dev keys from ``mallkit.wechatpay_devkeys``).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import time
import uuid
from datetime import UTC, datetime

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_AUTH = re.compile(r'(\w+)="([^"]*)"')


class WechatPaySimulator:
    def __init__(self, *, mchid: str, appid: str, apiv3_key: str, merchant_public_key: str,
                 platform_private_key: str, platform_serial: str):
        self.mchid = mchid
        self.appid = appid
        self.apiv3_key = apiv3_key
        self._merchant_pub = serialization.load_pem_public_key(merchant_public_key.encode())
        self._platform_key = serialization.load_pem_private_key(platform_private_key.encode(), password=None)
        self.platform_serial = platform_serial
        self.transactions: dict[str, dict] = {}  # out_trade_no -> prepay data
        self.refunds: dict[str, dict] = {}  # out_refund_no -> refund
        self.prepays = 0
        self.settle_later: set[str] = set()  # out_trade_nos whose refunds answer PROCESSING until completed

    @classmethod
    def dev(cls) -> WechatPaySimulator:
        from mallkit import wechatpay_devkeys as devkeys

        return cls(mchid=devkeys.MCHID, appid=devkeys.APPID, apiv3_key=devkeys.APIV3_KEY,
                   merchant_public_key=devkeys.MERCHANT_PUBLIC_KEY, platform_private_key=devkeys.PLATFORM_PRIVATE_KEY,
                   platform_serial=devkeys.PLATFORM_SERIAL)

    # --- the platform's signature and encryption -------------------------------------------------

    def _sign(self, message: str) -> str:
        return base64.b64encode(self._platform_key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()  # type: ignore[union-attr,call-arg]

    def notification(self, out_trade_no: str, *, amount: int | None = None, timestamp: int | None = None,
                     notification_id: str | None = None, transaction_id: str | None = None,
                     tamper: bool = False, success_time: datetime | None = None) -> tuple[dict[str, str], str]:
        """(headers, raw body) of a TRANSACTION.SUCCESS notification, signed and encrypted
        (``success_time``: when the buyer paid, default now)."""
        tx = self.transactions.get(out_trade_no, {})
        total = amount if amount is not None else tx.get("total", 1)
        if "transaction_id" not in tx:
            tx["transaction_id"] = "4200" + secrets.token_hex(12)
        plain = {
            "mchid": self.mchid, "appid": self.appid, "out_trade_no": out_trade_no,
            "transaction_id": transaction_id or tx["transaction_id"], "trade_type": "JSAPI",
            "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
            "success_time": (success_time or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            "payer": {"openid": tx.get("openid", "")},
            "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
        }
        return self._signed(plain, event_type="TRANSACTION.SUCCESS", original_type="transaction", summary="支付成功",
                            notification_id=notification_id, timestamp=timestamp, tamper=tamper)

    def refund_notification(self, out_refund_no: str, *, status: str = "SUCCESS", amount: int | None = None,
                            notification_id: str | None = None, timestamp: int | None = None,
                            tamper: bool = False) -> tuple[dict[str, str], str]:
        """(headers, raw body) of a REFUND.<status> notification of a refund received, signed and encrypted."""
        r = self.refunds[out_refund_no]
        plain = {
            "mchid": self.mchid, "out_trade_no": r["out_trade_no"],
            "transaction_id": self.transactions.get(r["out_trade_no"], {}).get("transaction_id", ""),
            "out_refund_no": out_refund_no, "refund_id": r["refund_id"], "refund_status": status,
            "success_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            "user_received_account": "支付用户零钱",
            "amount": {"total": r["amount"]["total"], "refund": r["amount"]["refund"] if amount is None else amount,
                       "payer_total": r["amount"]["total"],
                       "payer_refund": r["amount"]["refund"] if amount is None else amount},
        }
        return self._signed(plain, event_type=f"REFUND.{status}", original_type="refund", summary="退款成功",
                            notification_id=notification_id, timestamp=timestamp, tamper=tamper)

    def _signed(self, plain: dict, *, event_type: str, original_type: str, summary: str,
                notification_id: str | None, timestamp: int | None, tamper: bool) -> tuple[dict[str, str], str]:
        nonce = secrets.token_hex(6)  # 12 characters, as WeChat Pay's
        ad = original_type
        ciphertext = AESGCM(self.apiv3_key.encode()).encrypt(nonce.encode(), json.dumps(plain).encode(), ad.encode())
        body = json.dumps({
            "id": notification_id or str(uuid.uuid4()), "create_time": plain["success_time"],
            "resource_type": "encrypt-resource", "event_type": event_type, "summary": summary,
            "resource": {"original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": ad, "nonce": nonce},
        }, ensure_ascii=False, separators=(",", ":"))
        ts = str(int(time.time()) if timestamp is None else timestamp)
        header_nonce = secrets.token_hex(16)
        signature = self._sign(f"{ts}\n{header_nonce}\n{body}\n")
        if tamper:
            body = body.replace(f'"summary":"{summary}"', f'"summary":"{summary}!"')
        headers = {"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": header_nonce, "Wechatpay-Signature": signature,
                   "Wechatpay-Serial": self.platform_serial, "Content-Type": "application/json"}
        return headers, body

    # --- the merchant's signature ----------------------------------------------------------------

    async def _authorized(self, request: Request, body: bytes) -> JSONResponse | None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("WECHATPAY2-SHA256-RSA2048 "):
            return JSONResponse({"code": "SIGN_ERROR", "message": "missing Authorization"}, status_code=401)
        parts = dict(_AUTH.findall(auth))
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        message = f"{request.method}\n{path}\n{parts.get('timestamp', '')}\n{parts.get('nonce_str', '')}\n{body.decode()}\n"
        try:
            self._merchant_pub.verify(base64.b64decode(parts.get("signature", "")), message.encode(),  # type: ignore[union-attr,call-arg]
                                      padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return JSONResponse({"code": "SIGN_ERROR", "message": "signature does not verify"}, status_code=401)
        if parts.get("mchid") != self.mchid:
            return JSONResponse({"code": "MCH_NOT_EXISTS", "message": "unknown mchid"}, status_code=400)
        if abs(time.time() - int(parts.get("timestamp", "0") or 0)) > 300:
            return JSONResponse({"code": "SIGN_ERROR", "message": "stale timestamp"}, status_code=401)
        return None

    async def jsapi(self, request: Request) -> JSONResponse:
        body = await request.body()
        refused = await self._authorized(request, body)
        if refused:
            return refused
        data = json.loads(body)
        otn = data["out_trade_no"]
        tx = self.transactions.setdefault(otn, {})
        if tx.get("total") not in (None, data["amount"]["total"]):
            return JSONResponse({"code": "INVALID_REQUEST", "message": "amount changed"}, status_code=400)
        tx.update(total=data["amount"]["total"], notify_url=data["notify_url"], openid=data["payer"]["openid"],
                  description=data.get("description", ""))
        tx.setdefault("prepay_id", "wx" + secrets.token_hex(14))
        self.prepays += 1
        return JSONResponse({"prepay_id": tx["prepay_id"]})

    async def refund(self, request: Request) -> JSONResponse:
        body = await request.body()
        refused = await self._authorized(request, body)
        if refused:
            return refused
        data = json.loads(body)
        existing = self.refunds.get(data["out_refund_no"])
        if existing is None:
            existing = {**data, "refund_id": "5030" + secrets.token_hex(12), "status": "PROCESSING" if data["out_trade_no"] in self.settle_later else "SUCCESS"}
            self.refunds[data["out_refund_no"]] = existing
        return JSONResponse({"refund_id": existing["refund_id"], "out_refund_no": data["out_refund_no"],
                             "status": existing["status"], "amount": data["amount"]})

    async def pay(self, request: Request) -> JSONResponse:
        data = await request.json()
        otn = data["out_trade_no"]
        if otn not in self.transactions:
            return JSONResponse({"code": "ORDER_NOT_EXIST", "message": "no prepay"}, status_code=404)
        headers, body = self.notification(otn, amount=data.get("amount"))
        async with httpx.AsyncClient(timeout=10) as http:
            try:
                resp = await http.post(self.transactions[otn]["notify_url"], content=body.encode(), headers=headers)
                status = resp.status_code
            except httpx.HTTPError:
                status = 0
        return JSONResponse({"merchant_status": status, "headers": headers, "body": body})

    def settle(self, out_refund_no: str) -> None:
        """A PROCESSING refund settles: it answers SUCCESS from now on (no notification sent)."""
        self.refunds[out_refund_no]["status"] = "SUCCESS"

    async def complete_refund(self, request: Request) -> JSONResponse:
        """A PROCESSING refund settles: SUCCESS from now on, and its notification is POSTed to its notify_url."""
        data = await request.json()
        r = self.refunds.get(data["out_refund_no"])
        if r is None:
            return JSONResponse({"code": "RESOURCE_NOT_EXISTS", "message": "no refund"}, status_code=404)
        self.settle(data["out_refund_no"])
        headers, body = self.refund_notification(data["out_refund_no"])
        status = 0
        if r.get("notify_url"):
            async with httpx.AsyncClient(timeout=10) as http:
                try:
                    status = (await http.post(r["notify_url"], content=body.encode(), headers=headers)).status_code
                except httpx.HTTPError:
                    status = 0
        return JSONResponse({"merchant_status": status, "headers": headers, "body": body})

    async def list_refunds(self, request: Request) -> JSONResponse:
        return JSONResponse(list(self.refunds.values()))

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v3/pay/transactions/jsapi", self.jsapi, methods=["POST"]),
            Route("/v3/refund/domestic/refunds", self.refund, methods=["POST"]),
            Route("/__sim/pay", self.pay, methods=["POST"]),
            Route("/__sim/refunds", self.list_refunds),
            Route("/__sim/refunds/complete", self.complete_refund, methods=["POST"]),
        ])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="WeChat Pay v3 simulator for development and tests (dev keys)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    args = parser.parse_args()
    print(f"WeChat Pay simulator listening on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(WechatPaySimulator.dev().app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
