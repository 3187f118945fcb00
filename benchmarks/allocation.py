"""Accuracy of spdy vs uniform vs global allocation at the same measured speedup.

Each policy prunes each built-in model to the same measured target (every policy lands within
[target * 1.03, target * 1.1]), then the same finetune runs (the product default unless --epochs is
given). Accuracy is top-1 on the held-out digits split (360 images: one image is 0.28 points), right
after pruning (BatchNorm re-estimated, no finetune) and after finetuning. One run per seed: the seed
picks the dense model's training run, the calibration order and the finetune's data order, and every
policy of a seed starts from the same dense model. The table shows the mean over seeds; the JSON
keeps every run.

    python benchmarks/allocation.py [--models a,b] [--targets 2,3] [--seeds 0,1,2] [--epochs N]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

from common import run_quietly, write_results

from deploycompress.recipe import build_config

POLICIES = ("spdy", "uniform", "global")


def run_one(model: str, target: float, policy: str, seed: int, epochs: int | None) -> dict:
    finetune = {} if epochs is None else {"epochs": epochs}
    with tempfile.TemporaryDirectory() as out:
        config = build_config(None, {"model": model, "target_speedup": target, "out": out, "seed": seed,
                                     "prune": {"policy": policy}, "finetune": finetune})
        report, seconds = run_quietly(config)
    return {"model": model, "target": target, "policy": policy, "seed": seed,
            "measured_speedup": report["speedup"]["measured"], "trusted": report["speedup"]["trusted"],
            "accuracy_dense": report["accuracy"]["dense"],
            "accuracy_no_finetune": report["finetune"]["accuracy_before"],
            "accuracy_finetuned": report["accuracy"]["compressed"], "finetune_epochs": report["finetune"]["epochs"],
            "prune_seconds": next(s["seconds"] for s in report["stages"] if s["name"] == "prune"),
            "seconds": seconds, "widths": {layer["name"]: layer["channels_after"] for layer in report["layers"]}}


def summarize(records: list[dict], models: list[str], targets: list[float], policies: list[str]):
    """Mean over seeds per (model, target, policy), and whether spdy is at least as accurate as each
    other policy in both columns."""
    rows, verdicts = [], []
    for model in models:
        for target in targets:
            means = {}
            for policy in policies:
                runs = [r for r in records if (r["model"], r["target"], r["policy"]) == (model, target, policy)]
                mean = {key: statistics.fmean(r[key] for r in runs)
                        for key in ("measured_speedup", "accuracy_dense", "accuracy_no_finetune", "accuracy_finetuned",
                                    "prune_seconds")}
                means[policy] = mean
                rows.append([model, f"{target:g}x", policy, mean["measured_speedup"], mean["accuracy_dense"],
                             mean["accuracy_no_finetune"], mean["accuracy_finetuned"],
                             " / ".join(f"{r['accuracy_finetuned']:.2f}" for r in runs), mean["prune_seconds"]])
            if "spdy" in means:
                others = [p for p in policies if p != "spdy"]
                for column in ("accuracy_no_finetune", "accuracy_finetuned"):
                    best_other = max((means[p][column] for p in others), default=float("-inf"))
                    verdicts.append({"model": model, "target": target, "column": column,
                                     "spdy": means["spdy"][column], "best_other": best_other,
                                     "spdy_at_least_as_accurate": means["spdy"][column] >= best_other - 1e-9})
    return rows, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet_digits,vgg_digits,mobilenet_digits")
    parser.add_argument("--targets", default="2,3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="finetune epochs (default: the product default)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    args = parser.parse_args()
    models, policies = args.models.split(","), args.policies.split(",")
    targets = [float(t) for t in args.targets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    records = []
    for seed in seeds:
        for model in models:
            for target in targets:
                for policy in policies:
                    records.append(run_one(model, target, policy, seed, args.epochs))
                    r = records[-1]
                    print(f"seed {seed} {model} {target:g}x {policy}: measured {r['measured_speedup']:.2f}x, "
                          f"acc {r['accuracy_no_finetune']:.2f} -> {r['accuracy_finetuned']:.2f} "
                          f"(prune {r['prune_seconds']:.0f} s)", flush=True)
    rows, verdicts = summarize(records, models, targets, policies)
    wins = sum(v["spdy_at_least_as_accurate"] for v in verdicts)
    epochs = sorted({r["finetune_epochs"] for r in records})
    notes = [f"Measured targets {', '.join(f'{t:g}x' for t in targets)} (ONNX Runtime CPU, 1 thread, batch 1); "
             f"finetune {'/'.join(map(str, epochs))} epoch(s) of distillation + cross-entropy for every policy; "
             f"accuracy = top-1 % on the digits test split (360 images), mean over seeds {args.seeds}.",
             f"spdy at least as accurate as the best other policy (mean over seeds): {wins}/{len(verdicts)} "
             "(model, target, column) cells.",
             *[f"- NOT: {v['model']} {v['target']:g}x {v['column']}: spdy {v['spdy']:.2f} < {v['best_other']:.2f}"
               for v in verdicts if not v["spdy_at_least_as_accurate"]]]
    untrusted = [r for r in records if not r["trusted"]]
    if untrusted:
        notes.append(f"{len(untrusted)} run(s) had an untrusted speedup measurement (machine busy): "
                     + ", ".join(f"{r['model']}/{r['policy']}/seed {r['seed']}" for r in untrusted))
    write_results("allocation", {"records": records, "verdicts": verdicts, "targets": targets, "seeds": seeds},
                  ["model", "target", "policy", "measured speedup", "dense acc", "acc, no finetune", "acc, finetuned",
                   "finetuned per seed", "prune s"], rows, notes)


if __name__ == "__main__":
    main()
