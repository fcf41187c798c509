"""Client of the WeChat APIs the members service uses (real protocol).

* ``GET /sns/jscode2session``: login code -> openid, unionid (session_key is
  dropped here and never leaves the service);
* ``GET /cgi-bin/token``: the app's access token, cached until shortly before
  it expires;
* ``POST /cgi-bin/message/subscribe/send``: a subscribe message.

The base URL is a setting: the real ``https://api.weixin.qq.com`` in
production, the local fake (``fakes/wechat.py``) in development and tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from opentelemetry import trace

from mallkit.errors import FieldViolation, InvalidArgument, ResourceExhausted, Unavailable

from .errors import WECHAT_CODE_INVALID, WECHAT_UNAVAILABLE

tracer = trace.get_tracer("members.wechat")

# errcodes of jscode2session that mean "this code is bad", not "WeChat is down"
_BAD_CODE = {40029, 40163, 40226}


@dataclass(frozen=True)
class WechatIdentity:
    openid: str
    unionid: str | None


class DeliveryRefused(Exception):
    """WeChat refused a subscribe message (user refused, no subscription...)."""

    def __init__(self, errcode: int):
        super().__init__(f"errcode {errcode}")
        self.errcode = errcode


class WechatClient:
    def __init__(self, base_url: str, appid: str, secret: str, timeout: float = 5.0):
        self.appid = appid
        self._secret = secret
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._token: tuple[str, float] | None = None

    async def close(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str, params: dict) -> dict:
        try:
            resp = await self._http.get(path, params=params)
            resp.raise_for_status()
            return resp.json()
        except (httpx.HTTPError, ValueError):
            # from None: httpx's error text carries the URL, whose query holds the app secret and the code.
            raise Unavailable("WeChat is unreachable", reason=WECHAT_UNAVAILABLE) from None

    async def code_to_session(self, code: str) -> WechatIdentity:
        with tracer.start_as_current_span("wechat jscode2session", kind=trace.SpanKind.CLIENT):
            data = await self._get(
                "/sns/jscode2session",
                {"appid": self.appid, "secret": self._secret, "js_code": code, "grant_type": "authorization_code"},
            )
        errcode = int(data.get("errcode") or 0)
        if errcode in _BAD_CODE:
            raise InvalidArgument(
                "the login code is invalid or was already used",
                reason=WECHAT_CODE_INVALID,
                field_violations=[FieldViolation("code", "invalid or already used")],
                metadata={"field": "code", "errcode": errcode},
                zh="登录凭证无效,请重新登录",
            )
        if errcode == 45011:
            raise ResourceExhausted("WeChat login rate limit", reason="WECHAT_RATE_LIMITED")
        if errcode or not data.get("openid"):
            raise Unavailable("WeChat login failed", reason=WECHAT_UNAVAILABLE, metadata={"errcode": errcode})
        return WechatIdentity(openid=str(data["openid"]), unionid=data.get("unionid") or None)

    async def _access_token(self) -> str:
        if self._token and self._token[1] - time.time() > 300:
            return self._token[0]
        data = await self._get(
            "/cgi-bin/token", {"grant_type": "client_credential", "appid": self.appid, "secret": self._secret}
        )
        if not data.get("access_token"):
            raise Unavailable("WeChat access token unavailable", reason=WECHAT_UNAVAILABLE)
        self._token = (str(data["access_token"]), time.time() + int(data.get("expires_in", 7200)))
        return self._token[0]

    async def send_subscribe_message(self, openid: str, template_id: str, data: dict[str, str], page: str) -> None:
        """Send; raises DeliveryRefused when WeChat refuses, UNAVAILABLE when down."""
        body = {
            "touser": openid,
            "template_id": template_id,
            "page": page,
            "data": {k: {"value": v} for k, v in data.items()},
        }
        with tracer.start_as_current_span("wechat subscribe.send", kind=trace.SpanKind.CLIENT):
            for _ in range(2):
                token = await self._access_token()
                try:
                    resp = await self._http.post("/cgi-bin/message/subscribe/send", params={"access_token": token}, json=body)
                    resp.raise_for_status()
                    result = resp.json()
                except (httpx.HTTPError, ValueError):
                    raise Unavailable("WeChat is unreachable", reason=WECHAT_UNAVAILABLE)
                errcode = int(result.get("errcode") or 0)
                if errcode in (40001, 42001):  # token invalid or expired: refresh once
                    self._token = None
                    continue
                if errcode:
                    raise DeliveryRefused(errcode)
                return
        raise Unavailable("WeChat refused the access token", reason=WECHAT_UNAVAILABLE)
