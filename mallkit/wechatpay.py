"""WeChat Pay v3 (JSAPI) as the merchant sees it: signed requests out, verified notifications in.

The protocol only (no business rule): the services that take payments (orders
for orders, points for the cash part of points + cash redemptions) each build
one client from their own settings and decide what a payment or refund means.

* Requests to WeChat Pay carry ``Authorization: WECHATPAY2-SHA256-RSA2048
  mchid=..,nonce_str=..,signature=..,timestamp=..,serial_no=..``; the
  signature is RSA-SHA256 (PKCS#1 v1.5) with the merchant private key over
  ``METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n``.
* The mini-program's ``wx.requestPayment`` gets ``paySign`` = RSA-SHA256 over
  ``appId\\ntimeStamp\\nnonceStr\\npackage\\n``.
* Notifications are verified with the platform public key over
  ``TIMESTAMP\\nNONCE\\nBODY\\n`` (headers ``Wechatpay-*``), within a timestamp
  window, and the ``resource`` is decrypted with AES-256-GCM and the APIv3 key.
  Payment (``TRANSACTION.*``) and refund (``REFUND.*``) notifications share
  that envelope; :meth:`WechatPay.verify_notification` returns a
  :class:`PaidTransaction` or a :class:`RefundNotice`.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import time
from dataclasses import dataclass

import httpx
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class NotificationRejected(Exception):
    """A notification that must not be applied (bad signature, stale, undecryptable)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class PayApiError(Exception):
    """WeChat Pay answered an error or could not be reached."""


@functools.lru_cache(maxsize=8)
def _private_key(pem: str):
    return serialization.load_pem_private_key(pem.encode(), password=None)  # validated once, then cached


@functools.lru_cache(maxsize=8)
def _public_key(pem: str):
    return serialization.load_pem_public_key(pem.encode())


def sign(private_key_pem: str, message: str) -> str:
    key = _private_key(private_key_pem)
    return base64.b64encode(key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()  # type: ignore[union-attr,call-arg]


def verify(public_key_pem: str, message: str, signature_b64: str) -> bool:
    key = _public_key(public_key_pem)
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), message.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


@functools.lru_cache(maxsize=4)
def _aes(key: str) -> AESGCM:
    return AESGCM(key.encode())


def decrypt_resource(apiv3_key: str, resource: dict) -> dict:
    """The plaintext JSON of an AES-256-GCM ``resource`` object."""
    try:
        aes = _aes(apiv3_key)
        plain = aes.decrypt(
            resource["nonce"].encode(),
            base64.b64decode(resource["ciphertext"]),
            (resource.get("associated_data") or "").encode(),
        )
        return json.loads(plain)
    except (InvalidTag, KeyError, ValueError, TypeError) as exc:
        raise NotificationRejected("NOTIFICATION_UNDECRYPTABLE", "resource could not be decrypted") from exc


@dataclass(frozen=True)
class PaidTransaction:
    notification_id: str
    out_trade_no: str
    transaction_id: str
    total_fen: int
    payer_total_fen: int
    success_time: str
    trade_state: str


@dataclass(frozen=True)
class RefundNotice:
    """A verified refund result notification (退款结果通知): SUCCESS, CLOSED or ABNORMAL."""

    notification_id: str
    out_trade_no: str
    out_refund_no: str
    refund_id: str
    refund_status: str
    refund_fen: int
    total_fen: int
    success_time: str


class WechatPay:
    """The merchant's client of WeChat Pay v3 and verifier of its notifications."""

    def __init__(self, *, base_url: str, mchid: str, appid: str, merchant_private_key: str, merchant_serial: str,
                 apiv3_key: str, platform_public_key: str, platform_serial: str, notify_url: str,
                 window_seconds: int = 300, timeout: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.mchid = mchid
        self.appid = appid
        self._merchant_key = merchant_private_key
        self.merchant_serial = merchant_serial
        self._apiv3_key = apiv3_key
        self.platform_public_key = platform_public_key
        self.platform_serial = platform_serial
        self.notify_url = notify_url
        self.window_seconds = window_seconds
        self._http = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    # --- outgoing ----------------------------------------------------------------------------

    def _authorization(self, method: str, path: str, body: str) -> str:
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        signature = sign(self._merchant_key, f"{method}\n{path}\n{ts}\n{nonce}\n{body}\n")
        return (f'WECHATPAY2-SHA256-RSA2048 mchid="{self.mchid}",nonce_str="{nonce}",signature="{signature}",'
                f'timestamp="{ts}",serial_no="{self.merchant_serial}"')

    async def _call(self, method: str, path: str, payload: dict | None = None) -> dict:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")) if payload is not None else ""
        headers = {"Authorization": self._authorization(method, path, body), "Accept": "application/json",
                   "Content-Type": "application/json"}
        try:
            resp = await self._http.request(method, self.base_url + path, content=body.encode() or None, headers=headers)
        except httpx.HTTPError as exc:
            raise PayApiError(f"WeChat Pay unreachable: {type(exc).__name__}") from exc
        if resp.status_code >= 300:
            raise PayApiError(f"WeChat Pay answered {resp.status_code}")
        return resp.json() if resp.content else {}

    async def jsapi_prepay(self, *, out_trade_no: str, description: str, total_fen: int, openid: str) -> str:
        data = await self._call("POST", "/v3/pay/transactions/jsapi", {
            "appid": self.appid, "mchid": self.mchid, "description": description[:127], "out_trade_no": out_trade_no,
            "notify_url": self.notify_url, "amount": {"total": total_fen, "currency": "CNY"}, "payer": {"openid": openid},
        })
        prepay_id = data.get("prepay_id")
        if not prepay_id:
            raise PayApiError("no prepay_id in answer")
        return str(prepay_id)

    def request_payment_params(self, prepay_id: str) -> dict[str, str]:
        ts, nonce, package = str(int(time.time())), secrets.token_hex(16), f"prepay_id={prepay_id}"
        pay_sign = sign(self._merchant_key, f"{self.appid}\n{ts}\n{nonce}\n{package}\n")
        return {"appId": self.appid, "timeStamp": ts, "nonceStr": nonce, "package": package, "signType": "RSA",
                "paySign": pay_sign}

    async def refund(self, *, out_trade_no: str, out_refund_no: str, refund_fen: int, total_fen: int) -> str:
        """Request a refund (idempotent on out_refund_no); returns SUCCESS, PROCESSING, ..."""
        data = await self._call("POST", "/v3/refund/domestic/refunds", {
            "out_trade_no": out_trade_no, "out_refund_no": out_refund_no, "notify_url": self.notify_url,
            "amount": {"refund": refund_fen, "total": total_fen, "currency": "CNY"},
        })
        return str(data.get("status", ""))

    # --- incoming ----------------------------------------------------------------------------

    def verify_notification(self, *, timestamp: str, nonce: str, signature: str, serial: str, body: str,
                            now: float | None = None) -> PaidTransaction | RefundNotice:
        """Verify and decrypt a payment or refund notification, or raise NotificationRejected."""
        now = time.time() if now is None else now
        if serial != self.platform_serial:
            raise NotificationRejected("NOTIFICATION_SERIAL_UNKNOWN", "unknown platform serial")
        if not timestamp.isdigit() or abs(now - int(timestamp)) > self.window_seconds:
            raise NotificationRejected("NOTIFICATION_STALE", "timestamp outside the accepted window")
        if not verify(self.platform_public_key, f"{timestamp}\n{nonce}\n{body}\n", signature):
            raise NotificationRejected("NOTIFICATION_SIGNATURE_INVALID", "signature does not verify")
        try:
            envelope = json.loads(body)
            resource = envelope["resource"]
            notification_id = str(envelope["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise NotificationRejected("NOTIFICATION_MALFORMED", "body is not a WeChat Pay notification") from exc
        if resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise NotificationRejected("NOTIFICATION_MALFORMED", "unsupported algorithm")
        tx = decrypt_resource(self._apiv3_key, resource)
        if str(envelope.get("event_type", "")).startswith("REFUND."):
            return self._refund_notice(notification_id, tx)
        try:
            if tx["mchid"] != self.mchid or tx["appid"] != self.appid:
                raise NotificationRejected("NOTIFICATION_MERCHANT_MISMATCH", "notification for another merchant")
            return PaidTransaction(
                notification_id=notification_id, out_trade_no=str(tx["out_trade_no"]),
                transaction_id=str(tx["transaction_id"]), total_fen=int(tx["amount"]["total"]),
                payer_total_fen=int(tx["amount"].get("payer_total", tx["amount"]["total"])),
                success_time=str(tx.get("success_time", "")), trade_state=str(tx["trade_state"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise NotificationRejected("NOTIFICATION_MALFORMED", "resource lacks required fields") from exc

    def _refund_notice(self, notification_id: str, tx: dict) -> RefundNotice:
        try:
            if tx["mchid"] != self.mchid:
                raise NotificationRejected("NOTIFICATION_MERCHANT_MISMATCH", "notification for another merchant")
            return RefundNotice(
                notification_id=notification_id, out_trade_no=str(tx["out_trade_no"]),
                out_refund_no=str(tx["out_refund_no"]), refund_id=str(tx["refund_id"]),
                refund_status=str(tx["refund_status"]), refund_fen=int(tx["amount"]["refund"]),
                total_fen=int(tx["amount"]["total"]), success_time=str(tx.get("success_time", "")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise NotificationRejected("NOTIFICATION_MALFORMED", "resource lacks required fields") from exc
