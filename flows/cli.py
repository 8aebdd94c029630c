"""`voiceface`: the command line. `make` is a thin layer over it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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

    v = sub.add_parser(
        "vggface",
        help="add VGG-Face features (vggface.npy) to a finished build",
        description="Add the VGG-Face fc7 feature (vggface.npy) to every sample of OUT/shards and of the per-clip "
        "tars in OUT/.work, rewriting each tar atomically. Samples that have it with the same settings are skipped.",
    )
    v.add_argument("out", help="a build's output directory")
    v.add_argument("--config", help="YAML config file (its vggface section is used)")
    v.add_argument("--weights", help="vgg_face_dag.pth (default: vggface.weights, else $VGGFACE_WEIGHTS)")
    v.add_argument("--force", action="store_true", help="recompute features that are already there")

    args = parser.parse_args(argv)
    if args.command == "vggface":
        return _vggface(args)
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


def _vggface(args: argparse.Namespace) -> int:
    import dataclasses

    from pipeline.config import load_config
    from pipeline.vggface import STAGE_OFF, add_vggface_to_build, get_extractor, resolve_weights

    cfg = load_config(args.config).vggface
    if args.weights:
        cfg = dataclasses.replace(cfg, weights=args.weights)
    weights = resolve_weights(cfg)
    if weights is None:
        print(STAGE_OFF, file=sys.stderr)
        return 2
    if not (Path(args.out) / "shards").is_dir():
        print(f"error: {Path(args.out) / 'shards'} does not exist: build first", file=sys.stderr)
        return 2
    extractor = get_extractor(cfg, weights)
    print(extractor.describe())
    report, clip_tars = add_vggface_to_build(Path(args.out), extractor, force=args.force)
    print(f"{report}\nper-clip tars updated: {clip_tars}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
