"""Accuracy of spdy vs uniform vs global allocation at the same measured speedup.

Each policy prunes each built-in model to the same measured target (2x by default; the policies land
within [target, target * 1.1]), then the same finetune budget runs. The table shows top-1 accuracy on
the held-out split right after pruning (BatchNorm re-estimated, no finetune) and after finetuning,
next to the measured speedup each plan actually reached.

    python benchmarks/allocation.py [--models a,b] [--target 2] [--epochs 3]
"""
from __future__ import annotations

import argparse
import tempfile

from common import run_quietly, write_results

from deploycompress.recipe import build_config

POLICIES = ("spdy", "uniform", "global")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet_digits,vgg_digits,mobilenet_digits")
    parser.add_argument("--target", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--policies", default=",".join(POLICIES))
    args = parser.parse_args()
    rows, records = [], []
    for model in args.models.split(","):
        for policy in args.policies.split(","):
            with tempfile.TemporaryDirectory() as out:
                config = build_config(None, {"model": model, "target_speedup": args.target, "out": out,
                                             "prune": {"policy": policy}, "finetune": {"epochs": args.epochs}})
                report, seconds = run_quietly(config)
            prune_seconds = next(s["seconds"] for s in report["stages"] if s["name"] == "prune")
            record = {"model": model, "policy": policy, "measured_speedup": report["speedup"]["measured"],
                      "accuracy_dense": report["accuracy"]["dense"],
                      "accuracy_no_finetune": report["finetune"]["accuracy_before"],
                      "accuracy_finetuned": report["accuracy"]["compressed"], "prune_seconds": prune_seconds,
                      "seconds": seconds, "widths": {l["name"]: l["channels_after"] for l in report["layers"]}}
            records.append(record)
            rows.append([model, policy, record["measured_speedup"], record["accuracy_dense"],
                         record["accuracy_no_finetune"], record["accuracy_finetuned"], prune_seconds])
            print(rows[-1], flush=True)
    notes = [f"Target {args.target:g}x measured (ONNX Runtime CPU, 1 thread, batch 1); finetune {args.epochs} "
             "epoch(s) of distillation + cross-entropy for every policy; accuracy = top-1 % on the digits test split."]
    write_results("allocation", {"records": records, "target": args.target, "epochs": args.epochs},
                  ["model", "policy", "measured speedup", "dense acc", "acc, no finetune", "acc, finetuned",
                   "prune s"], rows, notes)


if __name__ == "__main__":
    main()
