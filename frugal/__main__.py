"""Command line: `python -m frugal bench [--section NAME ...] [--quick] [--out results]`, `report`, `info`,
`train --data SOURCE [--glob PATTERN] --preset NAME --steps N` (validation loss as it goes),
`train-dist ...` (one process; torchrun for more)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train-dist"]:                   # every option belongs to the script, --help included
        from frugal import torchrun_train
        torchrun_train.main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="frugal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="measure each lesson's headline numbers on this hardware")
    b.add_argument("--section", action="append", help="run only this section (repeatable)")
    b.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke test)")
    b.add_argument("--out", default="results", help="folder for <device>.json and figures")
    b.add_argument("--device", default=None, help="'cpu' or 'cuda' (default: a GPU when present)")
    sub.add_parser("info", help="what hardware frugal sees")
    r = sub.add_parser("report", help="write results/README.md (every measured table, in human units) and the "
                       "headlines in README.md's results block; runs no benchmark")
    r.add_argument("--readme", default="README.md")
    r.add_argument("--results", default="results", help="folder of the <device>.json files; its README.md is written")
    tr = sub.add_parser("train", help="train TinyGPT on text and print the validation loss as it goes")
    tr.add_argument("--data", default="corpus", help="'corpus', 'stdlib', a file or folder, or 'hf:NAME[:CONFIG]'")
    tr.add_argument("--glob", default=None, help="with a folder: the files to read, e.g. '**/*.py'")
    tr.add_argument("--preset", default="tiny", help="model size: frugal.model.PRESETS")
    tr.add_argument("--steps", type=int, default=200)
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the preset's block)")
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--precision", default="fp32", help="fp32, tf32, bf16 or fp16")
    tr.add_argument("--eval-every", type=int, default=50, help="steps between validation losses")
    tr.add_argument("--eval-batches", type=int, default=8)
    tr.add_argument("--device", default=None, help="'cpu' or 'cuda' (default: a GPU when present)")
    t = sub.add_parser("train-dist", help="the recipe on torch DDP/FSDP; for N ranks launch `python -m "
                       "frugal.torchrun_local --standalone --nproc-per-node N -m frugal.torchrun_train ...` "
                       "(here: one process)", add_help=False)
    t.add_argument("args", nargs=argparse.REMAINDER, help="see `python -m frugal.torchrun_train --help`")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ValueError as e:                   # a wrong option: say what to pass, without a traceback
        parser.error(str(e))


def _run(args) -> int:
    if args.command == "bench":
        from frugal import bench
        bench.run(args.section, args.out, args.quick, args.device)
    elif args.command == "report":
        from frugal import bench
        changed = bench.update_readme(args.readme, args.results)
        print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
    elif args.command == "train":
        from frugal.model import preset
        from frugal.train import TrainConfig, train
        model_cfg = preset(args.preset)
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len or model_cfg.block_size,
                          lr=args.lr, precision=args.precision, device=args.device, data=args.data,
                          data_glob=args.glob, eval_every=args.eval_every, eval_batches=args.eval_batches)
        r = train(model_cfg, cfg)
        step, loss = r.val_loss[-1]
        print(f"final validation loss {loss:.4f} nats/token ({r.val_bpb[-1][1]:.4f} bits/byte) after {step} steps; "
              f"training {r.train_time_s:.1f} s, validation {r.eval_time_s:.1f} s")
    elif args.command == "info":
        from dataclasses import asdict
        from frugal.device import describe
        for k, v in asdict(describe()).items():
            print(f"{k:20s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
