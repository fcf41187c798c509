"""A fake of the WeChat server APIs the mall calls, speaking their protocol.

* ``GET /sns/jscode2session`` (appid, secret, js_code, grant_type): a code
  ``"<user>"`` or ``"<user>#<nonce>"`` logs in as ``<user>``. Like real codes,
  a ``<user>#<nonce>`` code works once (errcode 40163 after); a bare
  ``<user>`` code may be reused, for hand-typed demos. Codes starting with
  ``invalid`` are refused (40029), a wrong appid or secret too (40013 / 40125).
* ``GET /cgi-bin/token``: an access token valid 7200 s.
* ``POST /cgi-bin/message/subscribe/send?access_token=``: records the message
  (the sink standing in for WeChat); users marked as refusing get 43101.
* ``GET /__fake/messages``, ``POST /__fake/refuse``, ``POST /__fake/reset``:
  test controls, not part of WeChat.

Run: ``python -m fakes.wechat --port 9100``.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def openid_for(appid: str, user: str) -> str:
    """The openid the fake gives ``user`` under ``appid`` (stable)."""
    return "o" + hashlib.sha256(f"{appid}:{user}".encode()).hexdigest()[:27]


def unionid_for(user: str) -> str:
    return "u" + hashlib.sha256(f"union:{user}".encode()).hexdigest()[:27]


class FakeWechat:
    def __init__(self, appid: str = "wx0000000000demo", secret: str = "dev-wechat-secret"):
        self.appid = appid
        self.secret = secret
        self.reset()

    def reset(self) -> None:
        self.used_codes: set[str] = set()
        self.tokens: dict[str, float] = {}
        self.messages: list[dict] = []
        self.refusing: set[str] = set()
        self.logins = 0
        self.session_keys: list[str] = []  # handed out (tests check none of them is ever logged)

    def _check_app(self, appid: str, secret: str) -> dict | None:
        if appid != self.appid:
            return {"errcode": 40013, "errmsg": "invalid appid"}
        if secret != self.secret:
            return {"errcode": 40125, "errmsg": "invalid appsecret"}
        return None

    async def jscode2session(self, request: Request) -> JSONResponse:
        q = request.query_params
        bad = self._check_app(q.get("appid", ""), q.get("secret", ""))
        if bad:
            return JSONResponse(bad)
        code = q.get("js_code", "")
        if q.get("grant_type") != "authorization_code" or not code or code.startswith("invalid"):
            return JSONResponse({"errcode": 40029, "errmsg": "invalid code"})
        if "#" in code and code in self.used_codes:
            return JSONResponse({"errcode": 40163, "errmsg": "code been used"})
        self.used_codes.add(code)
        self.logins += 1
        user = code.split("#", 1)[0]
        session_key = secrets.token_urlsafe(16)
        self.session_keys.append(session_key)
        return JSONResponse({
            "openid": openid_for(self.appid, user),
            "unionid": unionid_for(user),
            "session_key": session_key,
        })

    async def token(self, request: Request) -> JSONResponse:
        q = request.query_params
        bad = self._check_app(q.get("appid", ""), q.get("secret", ""))
        if bad:
            return JSONResponse(bad)
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + 7200
        return JSONResponse({"access_token": token, "expires_in": 7200})

    async def subscribe_send(self, request: Request) -> JSONResponse:
        token = request.query_params.get("access_token", "")
        if self.tokens.get(token, 0) < time.time():
            return JSONResponse({"errcode": 40001, "errmsg": "invalid credential"})
        body = await request.json()
        if not body.get("touser") or not body.get("template_id"):
            return JSONResponse({"errcode": 47003, "errmsg": "argument invalid"})
        if body["touser"] in self.refusing:
            return JSONResponse({"errcode": 43101, "errmsg": "user refuse to accept the msg"})
        msgid = len(self.messages) + 1
        self.messages.append({**body, "msgid": msgid})
        return JSONResponse({"errcode": 0, "errmsg": "ok", "msgid": msgid})

    async def list_messages(self, request: Request) -> JSONResponse:
        touser = request.query_params.get("touser")
        return JSONResponse([m for m in self.messages if touser is None or m["touser"] == touser])

    async def refuse(self, request: Request) -> JSONResponse:
        self.refusing.add((await request.json())["openid"])
        return JSONResponse({})

    async def do_reset(self, request: Request) -> JSONResponse:
        self.reset()
        return JSONResponse({})

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/sns/jscode2session", self.jscode2session),
            Route("/cgi-bin/token", self.token),
            Route("/cgi-bin/message/subscribe/send", self.subscribe_send, methods=["POST"]),
            Route("/__fake/messages", self.list_messages),
            Route("/__fake/refuse", self.refuse, methods=["POST"]),
            Route("/__fake/reset", self.do_reset, methods=["POST"]),
        ])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Fake WeChat server for development and tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--appid", default="wx0000000000demo")
    parser.add_argument("--secret", default="dev-wechat-secret")
    args = parser.parse_args()
    print(f"fake WeChat listening on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(FakeWechat(args.appid, args.secret).app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
