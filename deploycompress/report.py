"""report.json (for release scripts) and report.md (for people), written at the end of every run."""
from __future__ import annotations

from pathlib import Path

from . import __version__
from .context import RunContext
from .fileio import write_json, write_text
from .gate import exceeded_allowance
from .latency import host

REPORT_SCHEMA = 1


def _session_range(speedups: list[float] | None) -> list[float] | None:
    """[lowest, highest] of the session pairs' figures: the run-to-run spread, where there were two or more."""
    return [min(speedups), max(speedups)] if speedups and len(speedups) > 1 else None


def build_report(ctx: RunContext, timings: list[dict], total_seconds: float) -> dict:
    cfg = ctx.config
    latency = ctx.report.get("latency", {})
    comparison = latency.get("comparison", {})
    prune = ctx.report.get("prune", {})
    measured = comparison.get("speedup")
    dense_acc = ctx.report["accuracy"]["dense"]
    comp_acc = ctx.report["accuracy"]["compressed"]
    allowance = cfg.allowed_speedup
    report = {
        "schema": REPORT_SCHEMA,
        "deploycompress": __version__,
        "model": cfg.model,
        "data": ctx.data.name,
        # shape (batch 1), dtype, and for a model that looks its input up in an nn.Embedding the id range
        "input": ctx.report.get("input"),
        # training samples that scored the search's candidates and re-estimated BatchNorm
        "calibration_samples": ctx.report.get("calibration_samples"),
        "target_speedup": cfg.target_speedup,
        # An untrusted measurement is never a pass: target_met is null, and `check` fails on it.
        "target_met": None if measured is None or not latency.get("trusted", True)
        else bool(measured >= cfg.target_speedup),
        # The profile's figures that made the run prune again (newest last): short of the target, or above
        # the allowance while the search measured inside it ('reason'); 'reverted' when the overshot attempt shipped.
        "resolves": list(ctx.resolves),
        "speedup": {
            "measured": measured,
            "ci95": comparison.get("ci95"),
            "ratio_spread": comparison.get("ratio_spread"),
            "trusted": latency.get("trusted"),
            "attempts": latency.get("attempts"),
            "sessions": latency.get("sessions"),  # fresh session pairs behind the median
            "session_range": _session_range(latency.get("session_speedups")),
            "predicted": prune.get("predicted_speedup"),
            "macs_ratio": _ratio(ctx.report.get("macs", {})),
            # [target, target x (1 + prune.max_overshoot)]: faster than the allowance costs accuracy the
            # target did not ask for; target_met alone (what `check` gates on) does not say so.
            "allowed": [cfg.target_speedup, allowance],
            "within_allowed": None if measured is None else bool(cfg.target_speedup <= measured <= allowance),
        },
        "latency_ms": {
            "dense": comparison.get("a", {}).get("median_ms"),
            "compressed": comparison.get("b", {}).get("median_ms"),
            "dense_p90": comparison.get("a", {}).get("p90_ms"),
            "compressed_p90": comparison.get("b", {}).get("p90_ms"),
            # Rescaled to this measurement's dense latency: absolute times drift, ratios hold.
            "predicted": _scaled_prediction(comparison, prune.get("predicted_speedup")),
        },
        "threads": cfg.profile.threads,
        "batch_size": cfg.profile.batch_size,
        "device": cfg.device,
        "runtime": latency.get("fingerprint"),
        # other processes' share of the CPU time the profile's timing left free, and the hypervisor's
        # steal, while it measured (latency/host.py); null off Linux
        "host_load": latency.get("host_load"),
        "params": ctx.report.get("params"),
        "macs": ctx.report.get("macs"),
        "accuracy": {"dense": dense_acc, "compressed": comp_acc,
                     "drop": None if dense_acc is None or comp_acc is None else dense_acc - comp_acc},
        # the compressed ONNX model's outputs against the dense one's on the test split (random inputs
        # when data-free): relative RMS error, and top-1 agreement for class scores
        "outputs": ctx.report.get("outputs"),
        "onnx": ctx.report.get("onnx"),
        "policy": prune.get("policy"),
        "importance": prune.get("importance"),
        "channel_multiple": prune.get("channel_multiple"),
        "channel_multiple_source": prune.get("channel_multiple_source"),
        "finetune": ctx.report.get("finetune"),
        "stages": timings,
        "total_seconds": round(total_seconds, 3),
        "layers": prune.get("layers", []),
        "skipped_groups": prune.get("skipped", []),
        "ignored_modules": prune.get("ignored", []),
        # one line each where the model was adapted, or a method fell back or adapted itself
        "notes": ctx.report.get("setup_notes", []) + prune.get("notes", []),
        "search": {"candidates": prune.get("candidates", []), "details": prune.get("details", {})},
        "config": cfg.to_dict(),
        "artifacts": {"dense_onnx": "dense.onnx", "compressed_onnx": "model.onnx", "plan": "plan.json"},
    }
    return report


def _scaled_prediction(comparison: dict, predicted_speedup: float | None) -> float | None:
    dense = comparison.get("a", {}).get("median_ms")
    return None if dense is None or not predicted_speedup else dense / predicted_speedup


def _ratio(pair: dict) -> float | None:
    if pair.get("dense") and pair.get("compressed"):
        return pair["dense"] / pair["compressed"]
    return None


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def verdict(report: dict) -> str:
    """MET / NOT MET / UNTRUSTED, and whether a met target was overshot past the allowance."""
    text = {True: "MET", False: "NOT MET", None: "UNTRUSTED (measurement too noisy)"}[report["target_met"]]
    ceiling = exceeded_allowance(report)
    return text if ceiling is None else f"{text}, but above the allowed {ceiling:.2f}x (prune.max_overshoot)"


def measured_text(speedup: dict) -> str:
    """'measured 2.09x (95% CI 2.08-2.10; 3 session pairs 2.04-2.14)': the CI is the median pair's own
    rounds, the range how far the fresh session pairs read apart (the run-to-run spread)."""
    ci = speedup.get("ci95") or [None, None]
    spread = speedup.get("session_range")
    pairs = f"; {speedup.get('sessions')} session pairs {_fmt(spread[0])}-{_fmt(spread[1])}" if spread else ""
    return f"measured {_fmt(speedup.get('measured'))}x (95% CI {_fmt(ci[0])}-{_fmt(ci[1])}{pairs})"


def _token_input_text(shape_and_type: dict | None) -> str:
    below = (shape_and_type or {}).get("token_ids_below")
    return "" if below is None else f"; input int64 token ids in [0, {below})"


def _outputs_text(outputs: dict | None) -> str:
    if not outputs or outputs.get("relative_rms_error") is None:
        return ""
    agreement = outputs.get("top1_agreement")
    text = f"; outputs vs dense on the {outputs['split']}: relative RMS error {outputs['relative_rms_error']:.1%}"
    for each in outputs.get("per_output") or []:
        error = each.get("relative_rms_error")
        text += f"; {each['name']} {'n/a' if error is None else f'{error:.1%}'}"
        if each.get("top1_agreement") is not None:
            text += f" (top-1 agreement {each['top1_agreement']:.1f}%)"
    return text + ("" if agreement is None else f", top-1 agreement {agreement:.1f}%")


def summary_lines(report: dict) -> list[str]:
    s, lat, acc = report["speedup"], report["latency_ms"], report["accuracy"]
    lines = [
        f"target {report['target_speedup']:g}x: {verdict(report)} - {measured_text(s)}, "
        f"predicted {_fmt(s['predicted'])}x, MACs ratio {_fmt(s['macs_ratio'])}x",
        f"latency   dense {_fmt(lat['dense'], '.3f')} ms -> compressed {_fmt(lat['compressed'], '.3f')} ms "
        f"(ONNX Runtime {report['device']}, {report['threads']} thread(s), batch {report['batch_size']})",
        f"params    {report['params']['dense']:,} -> {report['params']['compressed']:,}; "
        f"MACs {report['macs']['dense']:,} -> {report['macs']['compressed']:,}",
        f"accuracy  dense {_fmt(acc['dense'], '.2f', '%')} -> compressed {_fmt(acc['compressed'], '.2f', '%')}"
        + _outputs_text(report.get("outputs")),
        f"onnx      parity max |torch - ORT| = {report['onnx']['max_abs_diff']:.2e}, opset {report['onnx']['opset']}"
        + _token_input_text(report.get("input")),
        f"policy    {report['policy']} with importance {report['importance']}; "
        f"{len(report['search']['candidates'])} candidates measured"
        + (f"; channels in multiples of {report['channel_multiple']} ({report['channel_multiple_source']})"
           if report.get("channel_multiple") else ""),
    ]
    if report.get("data") in ("random", "synthetic"):
        # The one thing a data-free run cannot say is how the model does on real inputs, and it can be far
        # worse than the random-input figures suggest (README, "Without --data").
        inputs = ("inputs synthesised to give its BatchNorms their trained statistics"
                  if report["data"] == "synthetic" else "random inputs")
        lines.append(f"data      none: the plan was chosen (and BatchNorms re-estimated) on {inputs}, and the "
                     "outputs above are compared on them; samples of real inputs (--data with x alone, no labels "
                     "needed) choose and check the plan on what the model will see")
    coarse = _coarse_widths_text(report)
    if coarse:
        lines.append(f"overshoot {coarse}")
    busy = host.busy_text(report.get("host_load"), " (measure again there: deploycompress compare dense.onnx model.onnx)")
    if busy:
        lines.append(f"host      {busy}")
    return lines


def _coarse_widths_text(report: dict) -> str | None:
    """Why a met target overshot the allowance. On the runtime's own channel block that is the runtime's
    doing: widths between two blocks run at the speed of the wider one (a net whose one 64-channel
    stream is its time, ORT on AVX-512: 48 and 40 channels 1.7x, 32 and 24 channels 3.4x, so at 2x
    nothing lands inside). A coarser multiple set in the recipe is the one setting to change."""
    ceiling, multiple = exceeded_allowance(report), report.get("channel_multiple")
    if ceiling is None or not multiple or multiple < 2:
        return None
    measured = [c.get("speedup") for c in (report.get("search") or {}).get("candidates", [])]
    if any(s is not None and report["target_speedup"] <= s <= ceiling for s in measured):
        return None  # the search did measure a plan inside: the profile's figure disagrees, not the widths
    missed = f"no plan the search measured landed in [{report['target_speedup']:g}x, {ceiling:.2f}x]"
    if str(report.get("channel_multiple_source", "")).startswith("the runtime's channel block"):
        return (f"{missed}: the runtime computes channels in blocks of {multiple} here, so latency moves in steps "
                "this model's groups cannot split finer, and the nearest plan above shipped (widths between "
                "blocks run at the wider block's speed)")
    return (f"{missed}: its widths move in steps of {multiple} channels (prune.channel_multiple); "
            f"channel_multiple = {multiple // 2} offers the widths between")


def markdown(report: dict, plots: list[str] | None = None) -> str:
    lines = [f"# deploycompress report: {report['model']} at {report['target_speedup']:g}x", ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    lines += ["", "## Stages", "", "| stage | seconds | resumed |", "|---|---:|---|"]
    lines += [f"| {t['name']} | {t['seconds']:.2f} | {'yes' if t.get('resumed') else ''} |" for t in report["stages"]]
    lines += ["", "## Layers", "",
              "| group | channels before | channels after | kept | latency before (ms) | latency after (ms) |",
              "|---|---:|---:|---:|---:|---:|"]
    for layer in report["layers"]:
        kept = layer["channels_after"] / layer["channels_before"]
        lines.append(f"| {layer['name']} | {layer['channels_before']} | {layer['channels_after']} | {kept:.0%} | "
                     f"{_fmt(layer.get('latency_ms_before'), '.3f')} | {_fmt(layer.get('latency_ms_after'), '.3f')} |")
    if report["skipped_groups"]:
        lines += ["", "## Left dense", ""]
        lines += [f"- `{s['name']}`: {s['reason']}" for s in report["skipped_groups"]]
    lines += _choice_lines(report)
    lines += _notes_and_pqi_lines(report)
    rt = report.get("runtime") or {}
    lines += ["", "## Measurement", "",
              f"Interleaved A/B rounds after warm-up, median of per-round ratios. ONNX Runtime {rt.get('ort')}, "
              f"CPU {rt.get('cpu')} ({rt.get('isa')}), {report['threads']} intra-op thread(s), "
              f"batch {report['batch_size']}.",
              "Latency figures are specific to this CPU, runtime version, thread count and batch size.", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)


def _choice_lines(report: dict) -> list[str]:
    """How SPDY chose among the plans it confirmed in the window: the criterion, and the finalists'
    losses when a short finetune ranked them."""
    details = report.get("search", {}).get("details", {})
    if not details.get("chosen_by"):
        return []
    lines = ["", "## How the plan was chosen", "",
             f"Chosen by {details['chosen_by']} from {details.get('accepted_in_window', 0)} plan(s) measured "
             f"inside the search window; it came from `{details.get('chosen_source')}` (calibrate/verify: the "
             "dynamic program; uniform/global: the baseline families searched as candidates)."]
    finalists = details.get("finalists") or []
    if finalists:
        lines += ["", "Finalists, each finetuned from the same weights and scored by "
                  f"{details.get('finalists_ranked_on', 'their loss on held-out samples')}; the gain is over the first "
                  "row (the lowest calibration loss), paired per held-out sample (per original, where the split "
                  "holds copies of each), with its standard error. The "
                  "finalists still close after one finetune were finetuned again with other seeds, and their "
                  "score is the mean over their finetunes.", "",
                  "| finalist from | measured speedup | calibration loss | held-out score after finetune | finetunes | "
                  "gain (SE) | chosen |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {f['source']} | {f['measured_speedup']:.2f}x | {f['calibration_loss']:.4f} | "
                  f"{f['finetuned_loss']:.4f} | {f.get('finetunes', 1)} | {f['gain_over_first']:+.4f} "
                  f"({f['gain_standard_error']:.4f}) | {'yes' if f['chosen'] else ''} |" for f in finalists]
    return lines


def _notes_and_pqi_lines(report: dict) -> list[str]:
    """Method notes, each layer's PQ Index before/after, and an iterative policy's PQI per round."""
    lines = []
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    layers = [layer for layer in report["layers"] if layer.get("pqi_before") is not None]
    if layers:
        lines += ["", "## Compressibility (PQ Index)", "",
                  "PQ Index (p = 0.5, q = 1) of each group's L2 channel norms: 0 when every channel is alike, "
                  "towards 1 when a few channels carry the group. After = the kept channels of the final model.", "",
                  "| group | PQI before | PQI after |", "|---|---:|---:|"]
        lines += [f"| {layer['name']} | {_fmt(layer.get('pqi_before'), '.3g')} | "
                  f"{_fmt(layer.get('pqi_after'), '.3g')} |" for layer in layers]
    details = report.get("search", {}).get("details", {})
    trajectory = details.get("pqi_trajectory")
    if trajectory:
        turn = details.get("pqi_turns_upward_at_round")
        rounds = [t for t in trajectory if t["round"] != "final"]
        if turn:
            verdict = f"Here it turns upward at round {turn}."
        elif len(rounds) > 1 and rounds[1]["pqi_mean"] > rounds[0]["pqi_mean"]:
            verdict = "Here it rises from the first round on (it never fell first)."
        else:
            verdict = "Here it never turns upward."
        lines += ["", "## PQ Index per round", "",
                  "Mean PQI of the surviving channels' scores at the start of each round. Where it turns upward "
                  "after falling, the scores stop getting more uniform: the paper's sign that pruning nears the "
                  "model's limit. " + verdict, "",
                  "| round | mean PQI at start | kept after the round | measured speedup |", "|---|---:|---:|---:|"]
        lines += [f"| {t['round']} | {t['pqi_mean']:.3g} | {_fmt(t.get('kept_fraction'), '.0%')} | "
                  f"{_fmt(t.get('speedup'), '.2f', 'x')} |" for t in trajectory]
    return lines


def write_report(run_dir: Path, report: dict) -> None:
    from .plots import write_run_plots  # matplotlib loads only when a report is written

    write_json(run_dir / "report.json", report)
    write_text(run_dir / "report.md", markdown(report, write_run_plots(run_dir, report)))
