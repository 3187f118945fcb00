"""The research methods against L2 magnitude at the same measured speedup and finetune budget.

Every entry prunes the built-in default model (resnet_digits on digits) to the same measured target
(2x by default) and then gets the same finetune (distillation + cross-entropy, same epochs). Criteria
run under the uniform policy, so only *which* channels go differs; the policies (global, SAP) use L2
scores, so only *how many per group* differs. Some methods train inside the prune step (the
regularised phase before scoring, SAP's finetunes between rounds); the table says how many epochs,
and the prune step's wall time includes them.

    python benchmarks/methods.py [--target 2] [--epochs 2] [--only NAME,NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import traceback

from common import run_quietly, write_results

from deploycompress.recipe import build_config

# name -> (prune settings, finetune settings)
METHODS = {
    "l2 (baseline)": ({"policy": "uniform", "importance": "l2"}, {}),
    "ispasp": ({"policy": "uniform", "importance": "ispasp"}, {}),
    "dcp": ({"policy": "uniform", "importance": "dcp"}, {}),
    "synaptic_strength": ({"policy": "uniform", "importance": "synaptic_strength"}, {}),
    "synaptic_strength + L1 phase": ({"policy": "uniform", "importance": "synaptic_strength"},
                                     {"regularizer": "synaptic_strength"}),
    "dsm scores": ({"policy": "uniform", "importance": "dsm"}, {}),
    "dsm scores + dsm penalty": ({"policy": "uniform", "importance": "dsm"}, {"regularizer": "dsm"}),
    "l2, policy global": ({"policy": "global", "importance": "l2"}, {}),
    "l2, policy sap": ({"policy": "sap", "importance": "l2"}, {}),
}


def training_in_prune(prune: dict, finetune: dict, config) -> float:
    """Epochs of training that happen inside the prune step for this entry."""
    epochs = 0.0
    if finetune.get("regularizer") or prune["importance"] == "dsm":
        epochs += config.finetune.regularize_epochs
    return epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated entry names (default: all)")
    args = parser.parse_args()
    chosen = [n for n in METHODS if not args.only or n in args.only.split(",")]
    rows, records = [], []
    load_before = os.getloadavg()[0]
    for name in chosen:
        prune, finetune = METHODS[name]
        with tempfile.TemporaryDirectory() as out:
            # Fresh measurements for every entry (no shared cache), so each prune step's wall time is its own.
            config = build_config(None, {"target_speedup": args.target, "out": out,
                                         "prune": {**prune, "reuse_measurements": False},
                                         "finetune": {"epochs": args.epochs, **finetune}})
            try:
                report, seconds = run_quietly(config)
            except Exception as exc:  # noqa: BLE001 - one failing method must not hide the others
                traceback.print_exc()
                records.append({"method": name, "error": f"{type(exc).__name__}: {exc}"})
                rows.append([name, prune["policy"], prune["importance"], finetune.get("regularizer"), None, None,
                             f"failed: {type(exc).__name__}", None, None, None, None, None, None])
                continue
        stage = {s["name"]: s["seconds"] for s in report["stages"]}
        widths = {l["name"]: l["channels_after"] for l in report["layers"]}
        # the policy's own measurement of the plan it chose (what it steered by), next to the final profile
        search = [c["speedup"] for c in report["search"]["candidates"] if c["widths"] == widths]
        inside = training_in_prune(prune, finetune, config)
        if prune["policy"] == "sap":
            inside += config.finetune.round_epochs * max(0, report["search"]["details"].get("rounds", 1) - 1)
        record = {"method": name, **prune, "regularizer": finetune.get("regularizer"),
                  "measured_speedup": report["speedup"]["measured"], "target_met": report["target_met"],
                  "search_speedup": search[-1] if search else None, "load_average": os.getloadavg()[0],
                  "accuracy_dense": report["accuracy"]["dense"],
                  "accuracy_no_finetune": report["finetune"]["accuracy_before"],
                  "accuracy_finetuned": report["accuracy"]["compressed"],
                  "prune_seconds": stage["prune"], "total_seconds": seconds,
                  "finetune_epochs": args.epochs, "training_epochs_inside_prune": inside,
                  "notes": report.get("notes", []),
                  "widths": widths}
        records.append(record)
        rows.append([name, prune["policy"], prune["importance"], finetune.get("regularizer") or "",
                     record["search_speedup"], record["measured_speedup"],
                     {True: "met", False: "NOT met", None: "untrusted"}[record["target_met"]],
                     record["accuracy_no_finetune"], record["accuracy_finetuned"],
                     record["prune_seconds"], round(inside, 2), record["total_seconds"], record["load_average"]])
        print(rows[-1], flush=True)
    load_after = os.getloadavg()[0]
    dense = next((r["accuracy_dense"] for r in records if "accuracy_dense" in r), None)
    uniform = {json.dumps(r["widths"], sort_keys=True) for r in records if r.get("policy") == "uniform" and "widths" in r}
    same_widths = ("All uniform-policy entries kept the same channel counts, so they differ only in which channels "
                   "they kept." if len(uniform) == 1 else "The uniform-policy entries landed on different channel "
                   "counts (measurement noise steered their searches apart): compare them with care.")
    notes = [f"resnet_digits on digits, target {args.target:g}x measured on ONNX Runtime CPU (1 thread, batch 1); "
             f"every entry then finetunes {args.epochs} epoch(s) (distillation + cross-entropy). Dense accuracy "
             f"{dense:.2f}%. Accuracy = top-1 % on the test split, of the exported ONNX model (after finetune) and "
             "of the masked model right after pruning (BatchNorm re-estimated, no finetune).",
             same_widths,
             "\"epochs in prune\" = training inside the prune step: the regularised phase before scoring "
             "(finetune.regularize_epochs) or SAP's finetunes between rounds (finetune.round_epochs each).",
             "\"search speedup\" is the policy's measurement of the plan it chose (it must be >= the target plus "
             "a 3% margin); \"measured\" is the final profile of the exported models; \"untrusted\": the final "
             "profile's rounds disagreed too much to give a verdict.",
             f"This is a shared 2-core machine: load average {load_before:.1f} at the start, {load_after:.1f} at the "
             "end, and per entry in the last column; speedups and wall times (prune s, total s) carry that noise."]
    write_results("methods", {"records": records, "target": args.target, "epochs": args.epochs,
                              "load_average": [load_before, load_after]},
                  ["method", "policy", "importance", "regularizer", "search speedup", "measured", "target",
                   "acc, no finetune", "acc, finetuned", "prune s", "epochs in prune", "total s", "load"], rows, notes)


if __name__ == "__main__":
    main()
