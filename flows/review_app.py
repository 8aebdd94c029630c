"""The review page: FastAPI over OUT/review/review.db, pages rendered server-side by Jinja with autoescape on.

Safety: it listens on 127.0.0.1 unless told otherwise, and another interface needs a token; on loopback the
Host header must be a loopback name (no DNS rebinding). Writes are JSON POSTs from the same origin (no
cross-site form can make one). Media come only from OUT, by sample key. A strict Content-Security-Policy
allows only the page's own script and styles, and every text (ids, identities, titles from the internet)
is escaped by Jinja or set with textContent.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from pipeline.config import Config
from pipeline.review.db import STATUSES, Filters
from pipeline.review.media import MEDIA, StaleIndex, card_media, inside
from pipeline.review.queue import describe, open_db

HERE = Path(__file__).resolve().parent
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
TOKEN_COOKIE = "voiceface_review_token"
MAX_PAGE = 1_000_000_000  # page numbers and queue positions are bounded: SQLite integers are 64-bit
MAX_SEQ = 2**62
REVIEWER_COOKIE = "voiceface_reviewer"
TOKEN_ENV = "VOICEFACE_REVIEW_TOKEN"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MIN_TOKEN_CHARS = 16  # a guessable token guards nothing: 16 URL-safe characters are ~96 bits


def check_bind(host: str, token: str | None) -> None:
    """Listening beyond this machine needs a strong token: anyone who can reach the port could decide otherwise."""
    if is_loopback(host):
        return
    if not token:
        raise ValueError(f"listening on {host} needs a token: pass --token or set {TOKEN_ENV}")
    if len(token) < MIN_TOKEN_CHARS or len(set(token)) < 8:
        raise ValueError(
            f"the token is too weak for {host}: use {MIN_TOKEN_CHARS} or more varied characters, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )


def clean_reviewer(name: str | None) -> str:
    name = " ".join(str(name or "").split())[:64]
    return name or "anonymous"


class Decide(BaseModel):
    key: str = Field(max_length=256)
    decision: Literal["accept", "reject"]
    reviewer: str = Field(default="anonymous", max_length=256)


class Group(BaseModel):
    clip: str | None = Field(default=None, max_length=256)
    identity: str | None = Field(default=None, max_length=1024)
    reviewer: str = Field(default="anonymous", max_length=256)


class Bulk(Group):
    decision: Literal["accept", "reject"]


class Who(BaseModel):
    reviewer: str = Field(default="anonymous", max_length=256)


def create_app(out: str | Path, cfg: Config | None = None, token: str | None = None, loopback: bool = True) -> FastAPI:
    """The review app for OUT. `loopback`: the server listens on a loopback address (Host must say so)."""
    from jinja2 import Environment, FileSystemLoader

    out = Path(out).resolve()
    cfg = cfg or Config()
    db = open_db(out)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)  # every {{ }} is escaped
    page_template = env.get_template("review.html")
    app = FastAPI(title="voiceface review", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        response = await _check(request, token, loopback)
        if response is None:
            response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.get("/", response_class=HTMLResponse)
    def page(
        request: Request,
        page: Annotated[int | None, Query(ge=1, le=MAX_PAGE)] = None,
        after: Annotated[int | None, Query(ge=-1, le=MAX_SEQ)] = None,
        status: str = "all",
        reason: str | None = None,
        clip: str | None = None,
        identity: str | None = None,
    ):
        size = cfg.review.page_size
        filters = Filters(status if status in STATUSES else "all", reason or None, clip or None, identity or None)
        if page is None and after is None:
            page = db.first_pending_page(filters, size)
        found = db.page(filters, size, page or 1, after)
        pages = max(1, math.ceil(found.total / size))
        history = db.history([r["key"] for r in found.rows])
        query = {k: v for k, v in (("status", filters.status), ("reason", reason), ("clip", clip),
                                   ("identity", identity)) if v and v != "all"}  # fmt: skip

        def url(**changes) -> str:
            q = {**query, **changes}
            return "/?" + urlencode({k: v for k, v in q.items() if v is not None and v != ""})

        reviewer = clean_reviewer(unquote(request.cookies.get(REVIEWER_COOKIE, "")))
        html = page_template.render(
            items=[_card(r, history.get(r["key"], []), cfg) for r in found.rows],
            progress=db.progress(),
            reviewer=reviewer,
            overridden=db.overridden(reviewer),
            filters=filters,
            statuses=STATUSES,
            reasons=db.reason_counts(),
            page=found.number,
            pages=max(pages, found.number),
            total=found.total,
            prev_url=url(page=found.number - 1) if found.number > 1 else None,
            next_url=url(after=found.rows[-1]["seq"]) if found.has_next else None,
            waiting=db.get_meta("curate_flow_run") is not None,
            out=str(out),
        )
        return HTMLResponse(html)

    @app.get("/api/progress")
    def api_progress():
        return db.progress()

    @app.post("/api/decide")
    def api_decide(body: Decide):
        reviewer = clean_reviewer(body.reviewer)
        before = db.states([body.key]).get(body.key)
        try:
            db.decide([body.key], body.decision, reviewer)
        except KeyError:
            raise HTTPException(404, "no such window") from None
        out = {"key": body.key, "state": db.states([body.key]).get(body.key), "progress": db.progress()}
        if before and before["reviewer"] != reviewer and before["decision"] != body.decision:
            out["overrode"] = {"reviewer": before["reviewer"], "decision": before["decision"]}  # said to both
        return out

    @app.post("/api/bulk")
    def api_bulk(body: Bulk):
        if (body.clip is None) == (body.identity is None):
            raise HTTPException(422, "give a clip or an identity")
        try:
            _, keys = db.decide_group(body.decision, clean_reviewer(body.reviewer), body.clip, body.identity)
        except KeyError:
            raise HTTPException(404, "no such clip or identity") from None
        return {"keys": keys, "decision": body.decision, "progress": db.progress()}

    @app.post("/api/undo")
    def api_undo(body: Who):
        action, keys = db.undo(clean_reviewer(body.reviewer))
        states = db.states(keys)
        return {"action": action, "keys": keys, "states": {k: states.get(k) for k in keys}, "progress": db.progress()}

    @app.post("/api/queue")
    def api_queue(body: Group):
        if (body.clip is None) == (body.identity is None):
            raise HTTPException(422, "give a clip or an identity")
        keys = db.request(
            clean_reviewer(body.reviewer),
            clips=[body.clip] if body.clip is not None else [],
            identities=[body.identity] if body.identity is not None else [],
        )
        if not keys:
            raise HTTPException(404, "no such clip or identity")
        return {"queued": len(keys), "progress": db.progress()}

    @app.post("/api/done")
    def api_done(body: Who):
        reviewer = clean_reviewer(body.reviewer)
        db.record("done", reviewer)
        if db.get_meta("curate_flow_run") is None:
            return {"resumed": False, "message": "batch marked done; no curate run is waiting (publish: voiceface "
                    "publish OUT, or make shards)"}  # fmt: skip
        from flows.curate import resume_waiting

        try:
            message = resume_waiting(out, reviewer)
        except Exception as err:  # the run may have timed out or been cancelled in the Prefect UI
            return JSONResponse({"resumed": False, "message": f"could not resume the curate run: {err}"}, 409)
        return {"resumed": True, "message": message}

    @app.get("/media/{kind}/{name}")
    def media(kind: str, name: str):
        stem, _, ext = name.partition(".")
        if kind not in MEDIA or ext != MEDIA[kind][0]:
            raise HTTPException(404)
        try:
            found = card_media(out, db, stem, kind)
        except PermissionError:
            raise HTTPException(404) from None
        except StaleIndex as err:
            raise HTTPException(409, f"{err}: run `voiceface queue OUT`") from None
        if found is None:
            raise HTTPException(404)
        headers = {"Cache-Control": "private, max-age=300"}
        if isinstance(found, Path):
            return FileResponse(inside(out, found), media_type=MEDIA[kind][1], headers=headers)
        return Response(found, media_type=MEDIA[kind][1], headers=headers)

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:  # a fixed list: no path from the request reaches the file system
            raise HTTPException(404)
        return FileResponse(HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    return app


async def _check(request: Request, token: str | None, loopback: bool) -> Response | None:
    """A response refusing the request, or None to let it through."""
    # a page on another site can point its own name at 127.0.0.1 (DNS rebinding): only loopback names pass
    if loopback and _hostname(request.headers.get("host", "")) not in LOOPBACK_NAMES:
        return PlainTextResponse("bad host", 400)
    if token:
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return PlainTextResponse("bad token", 401)
            # the token moves into an HttpOnly cookie and out of the address bar (and history)
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            response = RedirectResponse(target, 303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        got = request.cookies.get(TOKEN_COOKIE) or request.headers.get("x-review-token") or ""
        if not hmac.compare_digest(got.encode(), token.encode()):
            return PlainTextResponse("a token is needed: open the address the review command printed", 401)
    if request.method not in ("GET", "HEAD"):
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return PlainTextResponse("JSON only", 415)
        origin = request.headers.get("origin")
        if origin and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            return PlainTextResponse("cross-origin request refused", 403)
    return None


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _card(r: dict, history: list[dict], cfg: Config) -> dict:
    metrics, meta = json.loads(r["metrics"]), json.loads(r["meta"])
    key = r["key"]
    return {
        **r,
        "meta": meta,
        "metrics": metrics,
        "reasons": [(code, describe(code, metrics, cfg.review)) for code in json.loads(r["reasons"])],
        "history": history[-4:],
        "crop_url": f"/media/crop/{key}.jpg",
        "frame_url": f"/media/frame/{key}.jpg",
        "wav_url": f"/media/wav/{key}.wav",
        "context_url": f"/media/context/{key}.wav",
    }


class ReviewServer:
    """The app under uvicorn in a background thread (tests, and `curate`, which serves while its flow waits)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="review-server", daemon=True)

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def start(self, timeout_s: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the review server did not start")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ReviewServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(out: str | Path, host: str = "127.0.0.1", port: int = 8765, token: str | None = None, cfg=None) -> None:
    """Serve the review page until interrupted."""
    import uvicorn

    token = token or os.environ.get(TOKEN_ENV) or None
    check_bind(host, token)
    app = create_app(out, cfg, token=token, loopback=is_loopback(host))
    shown = f"[{host}]" if ":" in host else host
    print(f"review page: http://{shown}:{port}/" + (f"?token={token}" if token else ""), flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
