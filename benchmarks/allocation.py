"""Accuracy of spdy vs uniform vs global allocation at the same measured speedup.

Each policy prunes each built-in model to the same measured target (every policy aims inside
[target * 1.03, target * 1.07] of the allowed [target, target * 1.1]; a baseline whose one-parameter
bisection stops above that is widened into it one level of one group at a time, as SPDY's own plans
are, so no policy is compared at a higher speed than another), twice: once with no finetune
(`finetune.epochs 0`: the accuracy right after pruning, BatchNorm re-estimated) and once with the same
finetune for every policy (the product default unless --epochs is given). The runs are separate because
SPDY chooses differently when a finetune follows (it ranks its finalists by finetuning them). Accuracy
is top-1 on the held-out digits split (360 images: one image is 0.28 points). One run per seed: the seed
picks the dense model's training run, the calibration order and the finetune's data order, and every
policy of a seed starts from the same dense model. The finetuned column is the mean of K finetunes of
the plan the finetuned run chose (--finetune-repeats: the run's own, then K-1 from the same pruned
weights with other seeds): one plan's finetuned accuracy moves by 0.1-0.5 points (stdev) with the
finetune's seed alone, as much as the policies differ, and a policy comparison should not rest on one
draw of it. The table shows the mean over seeds; the JSON keeps every run and every finetune. A seed's
18 runs take about 1.5 hours on one core: the default five seeds about 7.5 hours, 4.5 with --jobs 2.

The default data is the built-in `digits_distorted` (1,077 test images: one image is 0.09 points), not
plain `digits`: on plain digits every policy finetunes back to within a test image or two of the dense
model's 99.7% (results/allocation_digits.md), so which plan is better is decided by one image's luck.
Each cell's verdict also gives spdy's lead over the best other policy, seed by seed, with its
standard error.

    python benchmarks/allocation.py [--models a,b] [--targets 2,3] [--seeds 0,1,2,3,4] [--epochs N] [--data NAME]
        [--finetune-repeats K]
    python benchmarks/allocation.py --from-json results/allocation.json   # re-summarise, no runs
    python benchmarks/allocation.py --from-json a.json --from-json b.json   # merge runs of other seeds
    python benchmarks/allocation.py --resume   # after an interruption: runs only the missing records
    python benchmarks/allocation.py --seeds 0,1 --jobs 2   # one seed per core, side by side (--resume works too)

Results: results/allocation.{json,md} for digits_distorted, results/allocation_NAME.* for other data.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import RESULTS, known, parse_list, run_pinned, run_quietly, usable_cores, write_results

from deploycompress.allocation import policies as policy_registry
from deploycompress.data import BUILTIN_DATASETS
from deploycompress.errors import TargetUnreachable
from deploycompress.models.zoo import model_registry
from deploycompress.recipe import build_config, parse_speedup

POLICIES = ("spdy", "uniform", "global")
DEFAULT_DATA = "digits_distorted"
# The finetuned column: a run's test accuracy averaged over its finetunes (`finetune_again`); records
# from before the repeats have the run's one finetune.
FINETUNED = "accuracy_finetuned_mean"


def test_images(data: str) -> int:
    return len(BUILTIN_DATASETS[data]().y_test)


def _run(model: str, target: float, policy: str, seed: int, epochs: int | None, data: str,
         repeats: int = 1, select_epochs: float | None = None,
         min_keep: float | None = None) -> tuple[dict, float, list[float]]:
    """(report, seconds, test accuracy of the run's pruned model finetuned with `repeats` seeds: the run's
    own finetune first, then REPEAT_SEED_STEP apart; empty when no finetune follows). `select_epochs`:
    finetune.select_epochs (SPDY's finalist finetunes), `min_keep`: prune.spdy_min_keep, each the product
    default when None."""
    finetune = {} if epochs is None else {"epochs": epochs}
    if select_epochs is not None:
        finetune["select_epochs"] = select_epochs
    with tempfile.TemporaryDirectory() as out:
        config = build_config(None, {"model": model, "data": data, "target_speedup": target, "out": out,
                                     "seed": seed, "finetune": finetune,
                                     "prune": {"policy": policy, **({} if min_keep is None else {"spdy_min_keep": min_keep})}})
        report, seconds = run_quietly(config)
        if not report["finetune"]["epochs"]:
            return report, seconds, []
        extra = [seed + REPEAT_SEED_STEP * k for k in range(1, repeats)]
        return report, seconds, [report["accuracy"]["compressed"], *finetune_again(config, extra)]


# The seeds of a run's extra finetunes are this far from its own, so no two runs of a benchmark share one.
REPEAT_SEED_STEP = 1000


def finetune_again(config, seeds: list[int]) -> list[float]:
    """Test accuracy of the run's pruned model (plan.json and pruned.pt in its run directory) finetuned
    again from the same weights with each of `seeds`, the finetune otherwise the run's own. Why: one plan
    finetuned with six seeds (vgg_digits 3x, digits_distorted) spread 0.14-0.49 points (stdev), as much
    as the gaps between policies; averaging over finetune seeds compares the allocations, not the luck
    of one finetune's data order."""
    from deploycompress.context import build_context
    from deploycompress.stages.finetune import finetune_epochs, short_fit
    from deploycompress.stages.prune import PruneStage
    from deploycompress.training import accuracy

    with contextlib.redirect_stdout(io.StringIO()):
        ctx = build_context(config, Path(config.out))
        PruneStage().restore(ctx)
    pruned = {name: tensor.clone() for name, tensor in ctx.model.state_dict().items()}
    epochs, accuracies = finetune_epochs(ctx), []
    for seed in seeds:
        ctx.model.load_state_dict(pruned)
        short_fit(ctx, epochs, seed, description=f"finetune again (seed {seed})")  # whole epochs: the stage's fit
        ctx.model.eval()
        accuracies.append(accuracy(ctx.model, ctx.data.x_test, ctx.data.y_test))
    return accuracies


NO_FINETUNE_FIELDS = ("measured_speedup_no_finetune", "trusted_no_finetune", "accuracy_no_finetune",
                      "chosen_source_no_finetune", "seconds_no_finetune")


def run_one(model: str, target: float, policy: str, seed: int, epochs: int | None, data: str,
            no_finetune: dict | None = None, finetune_repeats: int = 1, select_epochs: float | None = None,
            min_keep: float | None = None) -> dict:
    """Two runs: without a finetune (the policy then chooses for the model as pruned) and with one (SPDY
    then ranks its finalists by finetuning them); each column is the accuracy its own run delivers, the
    finetuned one averaged over `finetune_repeats` finetunes of the plan that run chose (`finetune_again`).
    `no_finetune`: an earlier record whose no-finetune run is taken instead of running it again;
    `select_epochs`: finetune.select_epochs of the finetuned run, `min_keep`: prune.spdy_min_keep of both
    (None: the product default)."""
    if no_finetune is None:
        bare, bare_seconds, _ = _run(model, target, policy, seed, 0, data, min_keep=min_keep)
        no_finetune = {"measured_speedup_no_finetune": bare["speedup"]["measured"],
                       "trusted_no_finetune": bare["speedup"]["trusted"],
                       "accuracy_no_finetune": bare["accuracy"]["compressed"],
                       "chosen_source_no_finetune": bare["search"].get("details", {}).get("chosen_source"),
                       "seconds_no_finetune": bare_seconds}
    report, seconds, repeats = _run(model, target, policy, seed, epochs, data, finetune_repeats, select_epochs, min_keep)
    details = report["search"].get("details", {})
    return {"model": model, "data": data, "target": target, "policy": policy, "seed": seed,
            "measured_speedup": report["speedup"]["measured"], "trusted": report["speedup"]["trusted"],
            **{key: no_finetune.get(key) for key in NO_FINETUNE_FIELDS},
            "accuracy_dense": report["accuracy"]["dense"],
            "accuracy_before_finetune": report["finetune"]["accuracy_before"],
            "accuracy_finetuned": report["accuracy"]["compressed"], "finetune_epochs": report["finetune"]["epochs"],
            "accuracy_finetuned_repeats": repeats, "select_epochs": _resolved_select_epochs(report),
            "select_repeats": report["config"]["finetune"].get("select_repeats", 1),
            "spdy_min_keep": report["config"]["prune"]["spdy_min_keep"],
            "chosen_by": details.get("chosen_by"), "chosen_source": details.get("chosen_source"),
            # a baseline's plan: as its bisection found it, widened into the window, or left above it
            "accepted_as": details.get("accepted_as"), "searched_speedup": details.get("searched_speedup"),
            "finalists": [{k: v for k, v in f.items() if k != "widths"} for f in details.get("finalists", [])],
            # spdy's own uniform/global candidates, to check against what those policies ship
            "baselines": {label: {k: b.get(k) for k in ("widths", "measured_speedup", "accepted_as")}
                          for label, b in details.get("baselines", {}).items()},
            "reused_baseline_decision": any("was reused" in note for note in report.get("notes", [])),
            "prune_seconds": next(s["seconds"] for s in report["stages"] if s["name"] == "prune"),
            "seconds": seconds + (no_finetune.get("seconds_no_finetune") or 0.0),
            "widths": {layer["name"]: layer["channels_after"] for layer in report["layers"]}}


def finetuned_mean(record: dict) -> float:
    """The finetuned column of a record: the mean over its finetunes (the run's one, for records from
    before --finetune-repeats)."""
    return statistics.fmean(record.get("accuracy_finetuned_repeats") or [record["accuracy_finetuned"]])


def summarize(records: list[dict], models: list[str], targets: list[float], policies: list[str]):
    """Mean over seeds per (model, target, policy), and whether spdy is at least as accurate as each
    other policy in both columns."""
    for r in records:
        r[FINETUNED] = finetuned_mean(r)
    rows, verdicts = [], []
    for model in models:
        for target in targets:
            means = {}
            for policy in policies:
                runs = [r for r in records if (r["model"], r["target"], r["policy"]) == (model, target, policy)]
                if not runs:  # every run of this cell failed (`failures`)
                    continue
                mean = {key: statistics.fmean(r[key] for r in runs)
                        for key in ("measured_speedup", "measured_speedup_no_finetune", "accuracy_dense",
                                    "accuracy_no_finetune", FINETUNED, "prune_seconds")}
                means[policy] = mean
                chosen = " / ".join(f"{r['chosen_source_no_finetune']}, {r['chosen_source']}" for r in runs) \
                    if policy == "spdy" else ""
                rows.append([model, f"{target:g}x", policy, mean["measured_speedup_no_finetune"], mean["measured_speedup"],
                             mean["accuracy_dense"], mean["accuracy_no_finetune"], mean[FINETUNED],
                             " / ".join(f"{r['accuracy_no_finetune']:.2f}" for r in runs),
                             " / ".join(f"{r[FINETUNED]:.2f}" for r in runs), chosen, mean["prune_seconds"]])
            if "spdy" in means:
                others = [p for p in policies if p != "spdy"]
                for column in ("accuracy_no_finetune", FINETUNED):
                    best = max(others, key=lambda p: means[p][column], default=None)
                    best_other = means[best][column] if best else float("-inf")
                    verdicts.append({"model": model, "target": target, "column": column,
                                     "spdy": means["spdy"][column], "best_other": best_other, "best_other_policy": best,
                                     **_paired_lead(records, model, target, column, best),
                                     "spdy_at_least_as_accurate": means["spdy"][column] >= best_other - 1e-9})
    return rows, verdicts


def _paired_lead(records: list[dict], model: str, target: float, column: str, other: str | None) -> dict:
    """spdy's accuracy minus `other`'s, seed by seed (both start from the same dense model), with the
    standard error of its mean: a lead smaller than about two standard errors is seed-to-seed noise."""
    def by_seed(policy: str) -> dict:
        return {r["seed"]: r[column] for r in records if (r["model"], r["target"], r["policy"]) == (model, target, policy)}

    if other is None:
        return {"lead_per_seed": [], "lead_mean": None, "lead_stderr": None}
    spdy, rival = by_seed("spdy"), by_seed(other)
    seeds = sorted(spdy.keys() & rival.keys())
    leads = [spdy[seed] - rival[seed] for seed in seeds]
    stderr = statistics.stdev(leads) / len(leads) ** 0.5 if len(leads) > 1 else None
    finetune_stderr = _finetune_noise(records, model, target, other, seeds) if column == FINETUNED else None
    noise = max((e for e in (stderr, finetune_stderr) if e is not None), default=None)
    mean = statistics.fmean(leads) if leads else None
    return {"lead_per_seed": leads, "lead_mean": mean, "lead_stderr": stderr, "lead_stderr_finetunes": finetune_stderr,
            "behind_beyond_noise": None if noise is None or mean is None else mean + NOISE_STANDARD_ERRORS * noise < 0}


# A cell counts as spdy behind beyond noise when its lead plus this many standard errors is still below 0.
NOISE_STANDARD_ERRORS = 2.0


def _finetune_noise(records: list[dict], model: str, target: float, other: str, seeds: list[int]) -> float | None:
    """Standard error of the finetuned lead that the finetune's seed alone accounts for, with both
    policies' plans held fixed: each seed's two means over K finetunes have variance s^2 / K each, and
    the lead averages the seeds. None without at least two finetunes a run. With two seeds the seed-to-
    seed standard error rests on one difference; this one rests on every finetune."""
    runs = {(r["policy"], r["seed"]): r.get("accuracy_finetuned_repeats") or [] for r in records
            if (r["model"], r["target"]) == (model, target) and r["policy"] in ("spdy", other)}
    variance = 0.0
    for seed in seeds:
        for policy in ("spdy", other):
            repeats = runs.get((policy, seed), [])
            if len(repeats) < 2:
                return None
            variance += statistics.variance(repeats) / len(repeats)
    return variance ** 0.5 / len(seeds) if seeds else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet_digits,vgg_digits,mobilenet_digits")
    parser.add_argument("--targets", default="2,3")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=None, help="finetune epochs (default: the product default)")
    parser.add_argument("--finetune-repeats", type=int, default=5, metavar="K",
                        help="finetune each finetuned run's plan K times (its own seed and K-1 more) and take the "
                             "mean accuracy (default: %(default)s)")
    parser.add_argument("--select-epochs", type=float, default=None, metavar="E",
                        help="finetune.select_epochs of the finetuned runs: how long SPDY finetunes each finalist "
                             "(default: the product default)")
    parser.add_argument("--spdy-min-keep", type=float, default=None, metavar="F",
                        help="prune.spdy_min_keep: the narrowest fraction of a group SPDY may keep (default: the "
                             "product default)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    # Only built-in data: the test split's size goes into the table, and the name into the results' file name.
    parser.add_argument("--data", default=DEFAULT_DATA, choices=sorted(BUILTIN_DATASETS),
                        help="a built-in dataset (default: %(default)s)")
    parser.add_argument("--from-json", metavar="PATH", action="append",
                        help="re-summarise the records of an earlier run (its JSON) instead of running again; "
                             "given more than once, merge runs of different seeds into one table")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its partial JSON (written after every record)")
    parser.add_argument("--keep-from", metavar="PATH",
                        help="run only --policies and take every other policy's records from an earlier JSON "
                             "(for re-measuring one policy after a change to it)")
    parser.add_argument("--reuse-no-finetune", action="store_true",
                        help="with --keep-from: take the re-run policies' no-finetune runs from it too, and run "
                             "only their finetuned runs (for a change that only matters when a finetune follows)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run N seeds at once, each in its own process on its own core with one thread "
                             "(at most the cores this process may use; default: %(default)s)")
    parser.add_argument("--records-to", metavar="PATH", help=argparse.SUPPRESS)  # a --jobs worker's records
    args = parser.parse_args()
    if not 1 <= args.jobs <= len(usable_cores()):
        parser.error(f"--jobs must be between 1 and the {len(usable_cores())} core(s) this process may use")
    if args.finetune_repeats < 1:
        parser.error("--finetune-repeats must be at least 1")
    if args.select_epochs is not None and args.select_epochs < 0:
        parser.error("--select-epochs must be 0 or more")
    if args.spdy_min_keep is not None and not 0 <= args.spdy_min_keep <= 1:
        parser.error("--spdy-min-keep must be between 0 and 1")
    if args.reuse_no_finetune and not args.keep_from:
        parser.error("--reuse-no-finetune takes its records from --keep-from: give both")
    for path in (args.keep_from, *(args.from_json or [])):
        if path and not Path(path).is_file():
            parser.error(f"{path}: no such file")
    if args.from_json:
        try:
            saved = merge_saved([load_saved(Path(path)) for path in args.from_json])
        except ValueError as error:
            parser.error(str(error))
        records = saved["records"]
        models = list(dict.fromkeys(r["model"] for r in records))
        policies = list(dict.fromkeys(r["policy"] for r in records))
        data = records[0].get("data", "digits")  # records from before --data were all on plain digits
        report(records, models, saved["targets"], policies, saved["seeds"], data, saved["environment"],
               saved.get("failures", []))
        return
    models = parse_list(parser, "--models", args.models, known(model_registry))
    policies = parse_list(parser, "--policies", args.policies, known(policy_registry))
    targets = parse_list(parser, "--targets", args.targets, parse_speedup)
    seeds = parse_list(parser, "--seeds", args.seeds, int)
    records = []
    name = "allocation" if args.data == DEFAULT_DATA else f"allocation_{args.data}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1 and len(seeds) > 1:
        _run_seed_workers(name, models, targets, policies, seeds, args.jobs, args.data)
        return
    partial = Path(args.records_to) if args.records_to else RESULTS / f"{name}.partial.json"
    if args.resume and partial.is_file():
        records = [r for r in json.loads(partial.read_text())["records"] if r["model"] in models
                   and r["target"] in targets and r["seed"] in seeds and r["policy"] in policies]
        print(f"resumed {len(records)} records from {partial}")
    earlier = {}
    if args.keep_from:
        kept = json.loads(Path(args.keep_from).read_text())["records"]
        if args.reuse_no_finetune:
            earlier = {(r["model"], r["target"], r["policy"], r["seed"]): r for r in kept
                       if r["policy"] in policies and r.get("data", "digits") == args.data}
        records += [r for r in kept if r["policy"] not in policies and r["model"] in models
                   and r["target"] in targets and r["seed"] in seeds and r.get("data", "digits") == args.data]
        print(f"kept {len(records)} records of {sorted({r['policy'] for r in records})} from {args.keep_from}")
        policies = [p for p in POLICIES if p in policies or any(r["policy"] == p for r in records)]
    failures: list[dict] = []
    for seed in seeds:
        for model in models:
            for target in targets:
                for policy in policies:
                    if any((r["model"], r["target"], r["policy"], r["seed"]) == (model, target, policy, seed)
                           for r in records):
                        continue
                    try:
                        records.append(run_one(model, target, policy, seed, args.epochs, args.data,
                                               earlier.get((model, target, policy, seed)), args.finetune_repeats,
                                               args.select_epochs, args.spdy_min_keep))
                    except TargetUnreachable as exc:  # one cell out of reach must not end an hour-long run
                        failures.append({"model": model, "target": target, "policy": policy, "seed": seed,
                                         "error": str(exc)})
                        print(f"seed {seed} {model} {target:g}x {policy}: FAILED: {exc}", flush=True)
                        continue
                    partial.write_text(json.dumps({"records": records, "failures": failures}, indent=1))
                    r = records[-1]
                    print(f"seed {seed} {model} {target:g}x {policy}: no finetune {r['accuracy_no_finetune']:.2f} "
                          f"at {r['measured_speedup_no_finetune']:.2f}x, finetuned {finetuned_mean(r):.2f} "
                          f"at {r['measured_speedup']:.2f}x (prune {r['prune_seconds']:.0f} s)", flush=True)
    if args.records_to:  # a --jobs worker: the parent merges and reports
        partial.write_text(json.dumps({"records": records, "failures": failures}, indent=1))
        return
    report(records, models, targets, policies, seeds, args.data, failures=failures)
    partial.unlink(missing_ok=True)


def _run_seed_workers(name: str, models: list[str], targets: list[float], policies: list[str], seeds: list[int],
                      jobs: int, data: str) -> None:
    """--jobs: one worker process per seed (this script with the same arguments, that seed alone), `jobs`
    at a time on cores of their own; then the table from all their records. A worker's records stay in
    results/NAME.seedS.partial.json until every worker has finished, so --resume picks up where each
    stopped."""
    parts = {seed: RESULTS / f"{name}.seed{seed}.partial.json" for seed in seeds}
    codes = run_pinned([[sys.executable, __file__, *sys.argv[1:], "--seeds", str(seed), "--jobs", "1",
                         "--records-to", str(parts[seed])] for seed in seeds], jobs)
    failed = [seed for seed, code in zip(seeds, codes) if code != 0]
    if failed:
        raise SystemExit(f"the worker(s) of seed(s) {', '.join(map(str, failed))} failed; their records so far are in "
                         f"{RESULTS}: rerun with --resume to go on")
    saved = [json.loads(parts[seed].read_text()) for seed in seeds]
    records = [r for part in saved for r in part["records"]]
    failures = [f for part in saved for f in part.get("failures", [])]
    policies = [p for p in POLICIES if p in policies or any(r["policy"] == p for r in records)]  # and --keep-from's
    report(records, models, targets, policies, seeds, data, failures=failures)
    for part in parts.values():
        part.unlink(missing_ok=True)


def _baseline_agreement_lines(records: list[dict]) -> list[str]:
    """Whether the uniform/global plan spdy weighed (finetuned run) is the one that policy's own finetuned
    run shipped: spdy can only be as good as a baseline whose plan it weighed."""
    shipped = {(r["model"], r["target"], r["seed"], r["policy"]): r["widths"] for r in records}
    lines = []
    for label in ("uniform", "global"):
        pairs = [(r, shipped[(r["model"], r["target"], r["seed"], label)]) for r in records
                 if r["policy"] == "spdy" and label in (r.get("baselines") or {})
                 and (r["model"], r["target"], r["seed"], label) in shipped]
        if not pairs:
            continue
        differ = [f"{r['model']} {r['target']:g}x seed {r['seed']}" for r, w in pairs if r["baselines"][label]["widths"] != w]
        lines.append(f"spdy weighed the plan --policy {label} shipped in {len(pairs) - len(differ)}/{len(pairs)} runs"
                     + (f" (not: {', '.join(differ)})" if differ else ""))
    return lines


SAVED_KEYS = ("environment", "records", "targets", "seeds")


def load_saved(path: Path) -> dict:
    """An earlier run's results JSON (what `report` writes); ValueError naming the file when it is not one."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not readable as JSON ({error})") from None
    missing = [key for key in SAVED_KEYS if key not in saved] if isinstance(saved, dict) else list(SAVED_KEYS)
    if missing:
        raise ValueError(f"{path}: not this benchmark's results JSON (no {', '.join(missing)})")
    return saved


def merge_saved(runs: list[dict]) -> dict:
    """One saved result from the JSONs of runs over different seeds (same targets). A run of seeds 3,4
    added to one of seeds 0,1,2 need not have run on the same machine: every record's speedups were
    measured side by side within its own run, so its policies compare fairly, and `environment.machines`
    keeps each run's machine with its seeds (the summary fields name both)."""
    if len(runs) == 1:
        return runs[0]
    seen: set[int] = set()
    for run in runs:
        if run["targets"] != runs[0]["targets"]:
            raise ValueError(f"the runs have different targets ({runs[0]['targets']} and {run['targets']}): merge "
                             "only runs of the same targets")
        if seen & set(run["seeds"]):
            raise ValueError(f"seed(s) {sorted(seen & set(run['seeds']))} appear in more than one run: merge only "
                             "runs of different seeds")
        seen |= set(run["seeds"])
    machines = [machine for run in runs
                for machine in run["environment"].get("machines", [{"seeds": run["seeds"], **run["environment"]}])]
    environment = {"machines": machines}
    for key in ("python", "torch", "onnxruntime", "cores", "cpu", "date"):
        values = list(dict.fromkeys(str(m[key]) for m in machines))
        environment[key] = (machines[0][key] if len(values) == 1 else " and ".join(
            f"{m[key]} (seeds {','.join(map(str, m['seeds']))})" for m in machines))
    environment["isa"] = [isa for isa in machines[0]["isa"] if all(isa in m["isa"] for m in machines)]
    return {"environment": environment, "records": [r for run in runs for r in run["records"]],
            "targets": runs[0]["targets"], "seeds": [s for run in runs for s in run["seeds"]],
            "failures": [f for run in runs for f in run.get("failures", [])]}


def report(records: list[dict], models: list[str], targets: list[float], policies: list[str], seeds: list[int],
           data: str, measured_in: dict | None = None, failures: list[dict] | None = None) -> None:
    """Write the JSON and Markdown results; `measured_in` keeps an earlier run's environment; `failures`:
    the runs that ended in an error (a target out of reach), which the means leave out."""
    failures = failures or []
    rows, verdicts = summarize(records, models, targets, policies)
    images = test_images(data)
    wins = sum(v["spdy_at_least_as_accurate"] for v in verdicts)
    epochs = sorted({r["finetune_epochs"] for r in records})
    notes = [f"Measured targets {', '.join(f'{t:g}x' for t in targets)} (ONNX Runtime CPU, 1 thread, batch 1); "
             f"finetune {'/'.join(map(str, epochs))} epoch(s) of distillation + cross-entropy for every policy; "
             f"accuracy = top-1 % on the {data} test split ({images} images), mean over seeds "
             f"{','.join(map(str, seeds))}; 'finetuned' is each run's plan finetuned "
             f"{_repeat_counts(records)} time(s) with different seeds, averaged (the finetune's seed alone moves a "
             "plan's accuracy by as much as the policies differ). "
             "'no finetune' and 'finetuned' are separate runs (finetune.epochs 0, and the default); "
             "'spdy chose' is where SPDY's plan came from in each (DP phase, or a baseline family). "
             f"SPDY's finalists finetuned {_select_epochs(records)} epoch(s) each before its choice (finetune.select_epochs), "
             f"those still close after one finetune {_select_repeats(records)} time(s) in all (finetune.select_repeats); "
             f"SPDY kept at least {_min_keep(records)} of every group (prune.spdy_min_keep).",
             f"spdy at least as accurate as the best other policy (mean over seeds): {wins}/{len(verdicts)} "
             "(model, target, column) cells.",
             *[f"- NOT: {v['model']} {v['target']:g}x {_column_label(v)}: spdy {v['spdy']:.2f} < {v['best_other']:.2f} "
               f"({(v['best_other'] - v['spdy']) * images / 100:.1f} test images a seed on average)"
               for v in verdicts if not v["spdy_at_least_as_accurate"]],
             _beyond_noise_line(verdicts),
             "spdy's lead over the best other policy, mean of its per-seed differences (points) +- its standard error:",
             *[_lead_line(v) for v in verdicts],
             "spdy's lead over each other policy over every (model, target, seed) run, points +- standard error:",
             *_pooled_lead_lines(records, policies),
             "Measured speedup (the profile stage's figure) against the allowed [target, target x 1.1], per policy "
             "over every run of both columns:",
             *[_speed_line(policy, [r for r in records if r["policy"] == policy]) for policy in policies],
             *_baseline_agreement_lines(records)]
    untrusted = [f"{r['model']} {r['target']:g}x/{r['policy']}/seed {r['seed']}/{run}" for r in records
                 for run, key in (("no finetune", "trusted_no_finetune"), ("finetuned", "trusted")) if not r[key]]
    if untrusted:
        notes.append(f"{len(untrusted)} run(s) had an untrusted speedup measurement (its rounds disagreed beyond the gate's limits): "
                     + ", ".join(untrusted))
    if failures:
        notes.append(f"{len(failures)} run(s) failed and are left out of the means: "
                     + "; ".join(f"{f['model']} {f['target']:g}x/{f['policy']}/seed {f['seed']}: {f['error']}"
                                 for f in failures))
    payload = {"records": records, "verdicts": verdicts, "targets": targets, "seeds": seeds, "failures": failures}
    if measured_in is not None:
        payload["environment"] = measured_in
    write_results("allocation" if data == DEFAULT_DATA else f"allocation_{data}", payload,
                  ["model", "target", "policy", "speedup, no finetune", "speedup, finetuned", "dense acc",
                   "acc, no finetune", "acc, finetuned", "no finetune per seed", "finetuned per seed",
                   "spdy chose (no finetune, finetuned) per seed", "prune s (finetuned run)"], rows, notes)


def _resolved_select_epochs(report: dict) -> float:
    """finetune.select_epochs as the run used it: unset means as long as the finetune."""
    configured = report["config"]["finetune"]["select_epochs"]
    return report["finetune"]["epochs"] if configured is None else configured


# Records from before the benchmark kept finetune.select_epochs ran with the default of the time.
SELECT_EPOCHS_BEFORE_RECORDED = 2.0


def _select_epochs(records: list[dict]) -> str:
    values = sorted({r.get("select_epochs", SELECT_EPOCHS_BEFORE_RECORDED) for r in records if r["policy"] == "spdy"})
    return "/".join(f"{v:g}" for v in values)


def _select_repeats(records: list[dict]) -> str:
    """Records from before finetune.select_repeats finetuned each finalist once."""
    values = sorted({r.get("select_repeats", 1) for r in records if r["policy"] == "spdy"})
    return "/".join(map(str, values))


def _min_keep(records: list[dict]) -> str:
    """Records from before prune.spdy_min_keep existed had no floor (0)."""
    values = sorted({r.get("spdy_min_keep", 0.0) for r in records if r["policy"] == "spdy"})
    return "/".join(f"{v:g}" for v in values)


def _repeat_counts(records: list[dict]) -> str:
    counts = sorted({len(r.get("accuracy_finetuned_repeats") or [None]) for r in records})
    return "/".join(map(str, counts))


def _column_label(v: dict) -> str:
    return "finetuned" if v["column"] in (FINETUNED, "accuracy_finetuned") else "no finetune"


def _lead_line(v: dict) -> str:
    column = _column_label(v)
    if v.get("lead_mean") is None:
        return f"- {v['model']} {v['target']:g}x {column}: no paired runs"
    stderr = "n/a" if v["lead_stderr"] is None else f"{v['lead_stderr']:.2f}"
    seeds = " / ".join(f"{lead:+.2f}" for lead in v["lead_per_seed"])
    finetunes = "" if v.get("lead_stderr_finetunes") is None else \
        f"; +- {v['lead_stderr_finetunes']:.2f} from the finetunes' seeds alone"
    behind = " BEHIND beyond noise" if v.get("behind_beyond_noise") else ""
    return (f"- {v['model']} {v['target']:g}x {column}: {v['lead_mean']:+.2f} +- {stderr} "
            f"against {v['best_other_policy']} (per seed {seeds}{finetunes}){behind}")


def _beyond_noise_line(verdicts: list[dict]) -> str:
    """How many cells have spdy behind the best other policy by more than NOISE_STANDARD_ERRORS standard
    errors (the larger of the seed-to-seed one and, for the finetuned column, the finetunes' own)."""
    judged = [v for v in verdicts if v.get("behind_beyond_noise") is not None]
    behind = [f"{v['model']} {v['target']:g}x {_column_label(v)}" for v in judged if v["behind_beyond_noise"]]
    return (f"spdy behind the best other policy by more than {NOISE_STANDARD_ERRORS:g} standard errors: "
            f"{len(behind)}/{len(judged)} cells with a standard error" + (f" ({', '.join(behind)})" if behind else "")
            + (f"; {len(verdicts) - len(judged)} cell(s) have none (one seed, no finetune repeats)"
               if len(judged) < len(verdicts) else ""))


def _pooled_lead_lines(records: list[dict], policies: list[str]) -> list[str]:
    """One figure per (column, other policy): the paired differences of every run, pooled."""
    spdy = {(r["model"], r["target"], r["seed"]): r for r in records if r["policy"] == "spdy"}
    lines = []
    for column, label in (("accuracy_no_finetune", "no finetune"), (FINETUNED, "finetuned")):
        for other in (p for p in policies if p != "spdy"):
            leads = [spdy[key][column] - r[column] for r in records if r["policy"] == other
                     for key in [(r["model"], r["target"], r["seed"])] if key in spdy]
            if len(leads) < 2:
                continue
            stderr = statistics.stdev(leads) / len(leads) ** 0.5
            wins, losses = sum(lead > 0 for lead in leads), sum(lead < 0 for lead in leads)
            lines.append(f"- {label}, against {other}: {statistics.fmean(leads):+.2f} +- {stderr:.2f} over "
                         f"{len(leads)} runs (spdy ahead in {wins}, behind in {losses}, level in "
                         f"{len(leads) - wins - losses})")
    return lines


def _speed_line(policy: str, runs: list[dict]) -> str:
    figures = [(r[key], r["target"]) for r in runs for key in ("measured_speedup_no_finetune", "measured_speedup")]
    below = sum(speedup < target for speedup, target in figures)
    above = sum(speedup > target * 1.1 for speedup, target in figures)
    return (f"- {policy}: below the target in {below} of {len(figures)} runs, above target x 1.1 in {above}, "
            f"inside in {len(figures) - below - above}")

if __name__ == "__main__":
    main()
