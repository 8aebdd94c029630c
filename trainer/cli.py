"""`voiceface train` and `voiceface eval` (also `python -m trainer.cli`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

MODELS = ("wav2pix", "speech2face", "voice2face", "cae")
COMMANDS = ("train", "eval")


def add_commands(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train Wav2Pix, the Speech2Face voice encoder, the voice2face GAN or the CAE on a build's shards",
        description="Train on SHARDS' train split into RUN (metrics.csv, samples/, checkpoint.pt). "
        "A RUN with a checkpoint resumes from it unless --fresh.",
    )
    t.add_argument("--model", choices=MODELS, required=True)
    t.add_argument("--shards", required=True, help="a build's OUT dir or its shards/ dir")
    t.add_argument("--run", required=True, help="run directory")
    t.add_argument("--config", default="default", help="default, or tiny (CPU, seconds)")
    t.add_argument("--steps", type=int, help="total steps (overrides the config)")
    t.add_argument("--batch-size", type=int, help="overrides the config")
    t.add_argument("--workers", type=int, help="DataLoader workers (overrides the config)")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    t.add_argument("--fresh", action="store_true", help="ignore RUN/checkpoint.pt and start again")
    t.add_argument("--target", choices=("auto", "vggface", "dlib"), help="speech2face: the face feature to predict")
    e = sub.add_parser(
        "eval",
        help="evaluate a run with the seeds' metrics (RUN/eval.json, RUN/eval.html)",
        description="Face-likeness (68 dlib landmarks found), identity top-1/top-5 retrieval against identity "
        "centroids, and recall@K for Speech2Face, on SHARDS' val split.",
    )
    e.add_argument("--run", required=True, help="run directory with checkpoint.pt")
    e.add_argument("--shards", required=True, help="a build's OUT dir or its shards/ dir")
    e.add_argument("--split", default="val", help="split to evaluate (default val)")
    e.add_argument("--limit", type=int, default=2000, help="at most this many samples")
    e.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")


def _module(name: str):
    import importlib

    return importlib.import_module(f"trainer.{name}.train")


def check_inputs(args: argparse.Namespace) -> None:
    """The shards (and for eval the checkpoint) exist: a one-line InputError otherwise."""
    from pathlib import Path

    from pipeline.reasons import InputError
    from trainer.data import shard_dir

    split = "train" if args.command == "train" else args.split
    if args.command == "eval" and not (Path(args.run) / "checkpoint.pt").is_file():
        raise InputError(f"no checkpoint {Path(args.run) / 'checkpoint.pt'}: train first (voiceface train --run ...)")
    d = shard_dir(args.shards)
    if not any(d.glob(f"{split}-*.tar")):
        where = f"{d} does not exist" if not d.exists() else f"no {split}-*.tar shards in {d}"
        raise InputError(f"{where}: build them first (make shards, or voiceface build MANIFEST --out DIR)")


def run(args: argparse.Namespace) -> int:
    check_inputs(args)
    if args.command == "train":
        m = _module(args.model)
        if args.config not in m.CONFIGS:
            raise SystemExit(f"error: --config must be one of {', '.join(m.CONFIGS)}")
        over = {"steps": args.steps, "batch_size": args.batch_size, "workers": args.workers, "device": args.device}
        if args.target and args.model == "speech2face":
            over["target"] = args.target
        cfg = dataclasses.replace(m.CONFIGS[args.config], **{k: v for k, v in over.items() if v is not None})
        last = m.train(args.shards, args.run, cfg, resume=not args.fresh)
        from trainer.common import write_loss_plot

        write_loss_plot(args.run)
        print(f"run: {args.run} (metrics.csv, losses.svg, samples/, checkpoint.pt); last: {last}")
        return 0
    from trainer.eval import evaluate

    result = evaluate(args.run, args.shards, split=args.split, limit=args.limit, device=args.device or "auto")
    print(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipeline.reasons import InputError

    parser = argparse.ArgumentParser(prog="trainer")
    add_commands(parser.add_subparsers(dest="command", required=True))
    try:
        return run(parser.parse_args(argv))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
