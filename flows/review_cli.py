"""`voiceface queue | review | publish | curate`: the curation commands (kept apart from the build's)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

COMMANDS = ("queue", "review", "publish", "curate")
DEFAULT_PORT = 8765


def add_commands(sub) -> None:
    """Add the curation subcommands to the `voiceface` parser."""

    def out_and_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("out", help="a build's output directory (shards/, clips.jsonl, .work/)")
        p.add_argument("--config", help="YAML config file (its `review` and `shards` sections apply)")

    def selection(p: argparse.ArgumentParser) -> None:
        p.add_argument("--clip", action="append", default=[], metavar="ID", help="queue every window of this clip")
        p.add_argument(
            "--identity", action="append", default=[], metavar="NAME", help="queue every window of this identity"
        )
        p.add_argument("--mirror", help="directory of source videos, for the page's source frames and 4 s audio")

    def serving(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1", help="address to listen on (not loopback: needs a token)")
        p.add_argument("--port", type=int, default=DEFAULT_PORT)
        p.add_argument("--token", help="required by every request; default $VOICEFACE_REVIEW_TOKEN")

    q = sub.add_parser(
        "queue",
        help="fill the review queue of a build",
        description="Queue a build's borderline windows (thresholds: config section `review`), and optionally "
        "every window of some clips or identities, and the windows the build rejected for some reasons.",
    )
    out_and_config(q)
    selection(q)
    q.add_argument("--reviewer", default="anonymous", help="recorded as who queued the clips/identities")
    q.add_argument(
        "--repair",
        action="store_true",
        help="recompute every window's queue reasons (not only those of changed clips) and say how many changed",
    )
    q.add_argument(
        "--reason",
        action="append",
        default=[],
        metavar="REASON",
        help="also queue the windows the build rejected for this reason (e.g. blurry, identity_mismatch; `all`): "
        "accepting one puts it in the shards at the next publish",
    )

    r = sub.add_parser(
        "review",
        help="serve the review page",
        description="Serve the review page for OUT (fills the queue first if OUT has none).",
    )
    out_and_config(r)
    serving(r)

    p = sub.add_parser(
        "publish",
        help="rewrite the shards so that they honour the review",
        description="Repack OUT/shards from the finished clips without rejected windows (and without queued windows "
        "nobody decided, unless review.include_unreviewed). No media work; clips.jsonl and summary.json follow.",
    )
    out_and_config(p)

    c = sub.add_parser(
        "curate",
        help="queue, serve the page, wait for the batch to be marked done, publish (a Prefect flow)",
        description="Run the `curate` Prefect flow on OUT while serving the review page: it queues, pauses until a "
        "reviewer marks the batch done (page button or Prefect UI), then publishes.",
    )
    out_and_config(c)
    selection(c)
    serving(c)
    c.add_argument("--timeout-s", type=int, default=7 * 24 * 3600, help="how long the flow waits for the batch")
    c.add_argument("--no-serve", action="store_true", help="do not serve the page (another `review` does)")


def run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config

    cfg = load_config(args.config)
    out = Path(args.out)
    if not (out / "clips.jsonl").exists():
        print(f"error: {out} has no clips.jsonl: build it first (voiceface build / make shards)", file=sys.stderr)
        return 2
    if args.command == "queue":
        from pipeline.review.queue import queue_out

        try:
            stats = queue_out(
                out, cfg.review, args.clip, args.identity, args.reviewer, _path(args.mirror), repair=args.repair
            )
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.reason:
            from pipeline.review.queue import open_db, queue_rejected

            rescued = queue_rejected(out, args.reason)
            no_sample = rescued.pop("no_sample", 0)
            print(f"rejected windows queued: {json.dumps(rescued)}"
                  + (f"; {no_sample} more were rejected before a face was looked for (nothing to put back)"
                     if no_sample else ""))  # fmt: skip
            stats["progress"] = open_db(out).progress()
        p = stats["progress"]
        requested = f" ({stats['requested']} of them asked for)" if "requested" in stats else ""
        auto = {k: v for k, v in stats["reasons"].items() if k != "requested"}
        if args.repair:
            print(f"repair: {stats['changed']} windows' queue entries were out of date and are now right")
        print(f"{stats['windows']} windows indexed; {p['queued']} queued{requested}, {p['reviewed']} reviewed, "
              f"{p['remaining']} remaining; automatic reasons: {json.dumps(auto)}")  # fmt: skip
        return 0
    if args.command == "publish":
        from pipeline.build import format_summary
        from pipeline.review.publish import publish

        print(format_summary(publish(out, cfg)))
        print(f"shards: {out / 'shards'}\nclips: {out / 'clips.jsonl'}\nreport: {out / 'summary.json'}")
        return 0

    from flows.review_app import TOKEN_ENV, check_bind

    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        check_bind(args.host, token)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "review":
        from flows.review_app import serve
        from pipeline.review.queue import db_path, queue_out

        if not db_path(out).exists():
            queue_out(out, cfg.review)
        serve(out, args.host, args.port, token, cfg)
        return 0
    return _curate(args, out, cfg, token)


def _curate(args: argparse.Namespace, out: Path, cfg, token: str | None) -> int:
    from flows.curate import curate
    from flows.review_app import ReviewServer, create_app, is_loopback
    from pipeline.review.queue import open_db

    server = None
    url = None
    if not args.no_serve:
        open_db(out)  # the page needs the database before the flow fills it
        server = ReviewServer(create_app(out, cfg, token, loopback=is_loopback(args.host)), args.host, args.port)
        url = server.start() + "/" + (f"?token={token}" if token else "")
        print(f"review page: {url}", flush=True)
    try:
        curate(
            out=str(out),
            config=args.config,
            clips=args.clip or None,
            identities=args.identity or None,
            mirror=args.mirror,
            timeout_s=args.timeout_s,
            review_url=url,
        )
    finally:
        if server is not None:
            server.stop()
    return 0


def _path(p: str | None) -> Path | None:
    return Path(p) if p else None
