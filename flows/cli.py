"""`voiceface`: the command line. `make` is a thin layer over it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows import review_cli

DEMO_MANIFEST = Path(__file__).resolve().parents[1] / "manifests" / "demo.csv"


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (stage sections; see README)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="clips processed at once")
    p.add_argument(
        "--optout",
        action="append",
        help="extra opt-out list (ids or URLs); manifests/optout.txt is always read",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="voiceface",
        description="Talking-head videos → aligned face + speech windows → WebDataset shards.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build",
        help="build shards from a manifest",
        description="Build WebDataset shards from a manifest (AVSpeech or generic CSV).",
    )
    b.add_argument("manifest", help="CSV manifest: AVSpeech rows (no header) or a header with at least `source`")
    b.add_argument("--out", required=True, help="output directory (shards/, clips.jsonl, summary.json)")
    b.add_argument("--mirror", help="directory of <id>.<ext> videos, tried before local paths and downloads")
    _add_build_args(b)

    d = sub.add_parser(
        "demo",
        help="generate the demo media offline and build out/demo",
        description="Generate the bundled demo's media (public-domain photos + espeak-ng speech) and build its shards.",
    )
    d.add_argument("--out", default="out/demo", help="output directory")
    d.add_argument("--media", default="out/demo-media", help="where the generated demo videos go (the build's mirror)")
    _add_build_args(d)

    review_cli.add_commands(sub)

    args = parser.parse_args(argv)
    if args.command in review_cli.COMMANDS:
        return review_cli.run(args)
    from flows.build import run_build

    if args.command == "demo":
        from pipeline.demo import make_demo_media

        make_demo_media(Path(args.media))
        run_build(
            DEMO_MANIFEST,
            args.out,
            mirror=args.media,
            config=args.config,
            optout=args.optout,
            workers=args.workers,
        )
    else:
        run_build(
            args.manifest,
            args.out,
            mirror=args.mirror,
            config=args.config,
            optout=args.optout,
            workers=args.workers,
        )
    # bad clips are data (clips.jsonl), not a failed command
    return 0


if __name__ == "__main__":
    sys.exit(main())
