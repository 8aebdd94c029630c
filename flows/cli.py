"""`voiceface`: the command line. `make` is a thin layer over it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from flows import review_cli
from pipeline.config import PRESETS
from trainer import cli as trainer_cli

RUNNERS = ("thread", "dask")  # flows.build.RUNNERS, repeated so that --help does not import Prefect
DEMO_MANIFEST = Path(__file__).resolve().parents[1] / "manifests" / "demo.csv"


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (stage sections; see README)")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help="one seed system's data (window, crops, extra members); see README"
    )
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="clips processed at once")
    p.add_argument("--optout", action="append", help="extra opt-out list (ids or URLs); manifests/optout.txt is read")
    p.add_argument("--runner", choices=RUNNERS, default="thread", help="threads, or Dask worker processes")
    p.add_argument("--address", help="with --runner dask: an existing cluster's scheduler, e.g. tcp://host:8786")
    p.add_argument("--wait", action="store_true", help="if another run holds OUT, wait for it instead of stopping")
    p.add_argument("--batch-clips", type=int, default=200, help="at most this many clips a task (default 200)")
    p.add_argument(
        "--batch-seconds", type=float, default=1800.0, help="at most about this much source video a task (seconds)"
    )
    p.add_argument("--repack", action="store_true", help="rewrite every shard, not only those whose clips changed")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voiceface", description="Talking-head videos → aligned face + speech windows → WebDataset shards."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build shards from a manifest", description="Build shards from a manifest.")
    b.add_argument("manifest", help="CSV manifest: AVSpeech rows (no header) or a header with at least `source`")
    b.add_argument("--out", required=True, help="output directory (shards/, clips.jsonl, report.html)")
    b.add_argument("--mirror", help="directory of <id>.<ext> videos, tried before local paths and downloads")
    _add_build_args(b)

    d = sub.add_parser(
        "demo",
        help="generate the demo media offline and build out/demo",
        description="Generate the demo's media (public-domain photos + espeak-ng speech) and build its shards.",
    )
    d.add_argument("--out", default="out/demo", help="output directory")
    d.add_argument("--media", default="out/demo-media", help="where the demo videos go (the build's mirror)")
    _add_build_args(d)

    s = sub.add_parser(
        "serve",
        help="serve the scheduled deployments",
        description="Serve the deployments (nightly channel refresh, on-demand build) against PREFECT_API_URL, "
        "or against a local `prefect server start` with --start-server.",
    )
    s.add_argument("--channels", default="manifests/youtubers.csv", help="name,gender,channel_url list")
    s.add_argument("--out", default="out/youtubers", help="output directory of the nightly refresh")
    when = s.add_mutually_exclusive_group()
    when.add_argument("--cron", default="0 3 * * *", help="schedule of the nightly refresh")
    when.add_argument("--interval", type=float, help="run the refresh every this many seconds instead of --cron")
    s.add_argument("--config", help="YAML config file for the refresh's builds")
    s.add_argument("--per-channel", type=int, help="newest videos listed per channel (default 20)")
    s.add_argument("--workers", type=int, default=2, help="clips processed at once by each run")
    s.add_argument("--start-server", action="store_true", help="start `prefect server start` (SQLite) first")
    s.add_argument("--port", type=int, default=4200, help="port of the server started with --start-server")
    v = sub.add_parser(
        "vggface",
        help="add VGG-Face features (vggface.npy) to a finished build",
        description="Compute the VGG-Face fc7 feature (vggface.npy) of every sample of OUT's finished clips into "
        "sidecars (OUT/.work/vggface), then repack the shards with them. The clip tars are only read; features "
        "already there with the same settings and crop are skipped.",
    )
    v.add_argument("out", help="a build's output directory")
    v.add_argument("--config", help="YAML config file (its vggface section is used)")
    v.add_argument("--weights", help="vgg_face_dag.pth (default: vggface.weights, else $VGGFACE_WEIGHTS)")
    v.add_argument("--force", action="store_true", help="recompute features that are already there")
    x = sub.add_parser(
        "export",
        help="write a build's shards in an original repository's layout",
        description="Write OUT's shards into DIR in the on-disk layout of the original code: wav2pix "
        "(imatge-upc/wav2pix), speech2face (saiteja-talluri/Speech2Face, needs vggface.npy) or voice2face "
        "(cmu-mlsp/reconstructing_faces_from_voices, needs utt.npy). See docs/export.md.",
    )
    x.add_argument("out", help="a build's output directory")
    x.add_argument("--format", required=True, choices=("wav2pix", "speech2face", "voice2face"))
    x.add_argument("dir", help="destination directory")
    review_cli.add_commands(sub)
    trainer_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; an everyday mistake (a wrong path, a bad config value, no ffmpeg) is one line on stderr
    and exit status 2, never a traceback."""
    from pipeline.reasons import InputError

    try:
        return _dispatch(_parser().parse_args(argv))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def check_build_inputs(manifest, out, mirror, config, preset) -> None:
    """What a build needs, checked before Prefect starts (inside a flow a mistake becomes a logged traceback)."""
    from pipeline.config import load_config
    from pipeline.manifest import read_manifest
    from pipeline.media import require_ffmpeg
    from pipeline.reasons import InputError

    require_ffmpeg()
    if not Path(manifest).is_file():
        raise InputError(f"manifest {manifest}: no such file")
    if mirror and not Path(mirror).is_dir():
        raise InputError(f"mirror {mirror}: no such directory")
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out} is a file, not a directory")
    load_config(config, preset)
    read_manifest(manifest)  # the header's columns; bad rows are data, not errors


def _dispatch(args: argparse.Namespace) -> int:
    """Serve, or run a command with its everyday failures said in one line."""
    if args.command == "serve":
        from flows.deployments import serve_deployments

        channels, out = str(Path(args.channels).resolve()), str(Path(args.out).resolve())
        config = str(Path(args.config).resolve()) if args.config else None
        serve_deployments(
            channels,
            out,
            args.cron,
            args.workers,
            args.start_server,
            args.port,
            args.interval,
            config,
            args.per_channel,
        )
        return 0
    from pipeline.lock import OutLocked

    try:
        return _run(args)
    except OutLocked as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        from pipeline.interrupt import DISK_FULL_ERRNOS, disk_full_message

        if err.errno not in DISK_FULL_ERRNOS:
            raise
        print(f"error: {disk_full_message(err)}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from pipeline.lock import out_lock

    if args.command == "vggface":
        with out_lock(args.out, "voiceface vggface"):
            return _vggface(args)
    if args.command == "export":
        from pipeline.export import export

        print(json.dumps(export(Path(args.out), args.format, Path(args.dir)), indent=1))
        return 0
    if args.command in review_cli.COMMANDS:
        return review_cli.run(args)
    if args.command in trainer_cli.COMMANDS:
        return trainer_cli.run(args)

    if args.command == "demo":
        from pipeline.demo.media import make_demo_media
        from pipeline.media import require_ffmpeg

        require_ffmpeg()

        make_demo_media(Path(args.media))
        manifest, mirror = DEMO_MANIFEST, args.media
    else:
        manifest, mirror = args.manifest, args.mirror
    check_build_inputs(manifest, args.out, mirror, args.config, args.preset)
    with out_lock(args.out, f"voiceface {args.command}", wait=args.wait):
        summary = finish_if_all_cached(
            manifest, args.out, mirror, args.config, args.optout, args.preset, repack=args.repack
        )
        if summary is None:
            from flows.build import run_build

            pool = dict(config=args.config, optout=args.optout, workers=args.workers, runner=args.runner)
            pool["preset"] = args.preset
            pool.update(batch_clips=args.batch_clips, batch_seconds=args.batch_seconds, repack=args.repack)
            summary = run_build(manifest, args.out, mirror=mirror, address=args.address, **pool)
    # bad clips are data (clips.jsonl), not a failed command; a clip that crashed on a bug, or a build in which
    # every clip failed, is (the same rule makes the Prefect run Failed)
    if summary.get("interrupted"):
        print(summary["interrupted"], file=sys.stderr)
        return 130  # as a shell reports a command stopped by Ctrl-C
    if summary.get("disk_full"):
        print(f"error: {summary['disk_full']}", file=sys.stderr)
        return 1
    if summary.get("failed_because"):
        print(f"build failed: {summary['failed_because']}", file=sys.stderr)
        return 1
    return 0


def finish_if_all_cached(manifest, out, mirror, config, optout, preset=None, repack=False) -> dict | None:
    """When every clip is already done with these settings and no Prefect server is configured, repack and
    report without starting Prefect's temporary server (seconds of start-up for no task); else None."""
    if os.environ.get("PREFECT_API_URL"):
        return None  # a real server is cheap to use and keeps the run history
    from pipeline.build import (
        build_failure,
        describe_plan,
        finish_build,
        format_summary,
        needs_work,
        output_paths,
        plan_build,
    )
    from pipeline.config import load_config, resolve_weights
    from pipeline.review.queue import prepare_review

    cfg = load_config(config, preset)
    if resolve_weights(cfg.vggface) is not None:
        return None  # the VGG-Face stage may have features to add to cached clips: that is GPU work for the flow
    if needs_work(manifest, out, cfg, optout):
        return None
    plan = plan_build(manifest, out, cfg, mirror=mirror, optout_files=optout, repack=repack)
    if plan.todo:
        return None
    print("\n".join(describe_plan(plan, manifest)))
    print("nothing to process: packing shards and the report without starting Prefect")
    summary = finish_build(plan, prepare_review)
    summary.pop("report_markdown")
    summary["failed_because"] = build_failure(summary, plan.n_clips)
    print(format_summary(summary) + "\n" + output_paths(out))
    return summary


def _vggface(args: argparse.Namespace) -> int:
    import dataclasses

    from pipeline.config import load_config
    from pipeline.models.vggface import STAGE_OFF, add_vggface_to_build, get_extractor, resolve_weights

    full = load_config(args.config)
    cfg = full.vggface
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
    report = add_vggface_to_build(Path(args.out), extractor, force=args.force)
    print(report)
    from pipeline.review.publish import publish

    summary = publish(args.out, full)  # the shards again, with the sidecars merged (no media work)
    print(f"shards repacked: {summary['samples']} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
