"""Runs the stages over one run directory; records what finished in a manifest so `--resume` can pick
up after an interruption; writes the report at the end."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from .context import RunContext, build_context
from .errors import UserError
from .fileio import ensure_writable_dir, remove_stale_temporaries, sha256, write_json
from .recipe import RunConfig
from .report import build_report, write_report
from .stages import Stage, default_stages

MANIFEST = "manifest.json"


def default_run_dir(config: RunConfig) -> Path:
    name = config.model.replace("/", "_").replace(":", "_").replace(".py", "")
    return Path("runs") / f"{name}-{config.target_speedup:g}x"


def _new_manifest(config: RunConfig) -> dict:
    return {"config": config.to_dict(), "stages": {}}


def _read_manifest(run_dir: Path, config: RunConfig) -> dict:
    """The manifest of the run to resume; a fresh one, said in a line, when there is none to read (a
    user who typed --resume expects stages restored and should learn why they all run)."""
    path = run_dir / MANIFEST
    if not path.is_file():
        print(f"resume: {run_dir} holds no run ({MANIFEST} is missing); starting a fresh run there")
        return _new_manifest(config)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("stages"), dict) and "config" in manifest):
        print(f"resume: {path} is not a run manifest; starting a fresh run in {run_dir}")
        return _new_manifest(config)
    return manifest


def _stage_intact(run_dir: Path, record: dict) -> bool:
    return all((run_dir / name).is_file() and sha256(run_dir / name) == digest
               for name, digest in record.get("outputs", {}).items())


# Each re-solve aims this much above the shortfall itself, so a second one is rarely needed.
RESOLVE_EXTRA = 0.01


def _resolve_after_short_profile(ctx: RunContext) -> dict | None:
    """When the profile's trusted figure is short of the target and re-solves are left: the measured
    speedup and the window shift for the next prune (the shortfall, plus RESOLVE_EXTRA, on top of any
    earlier shift). None otherwise: an untrusted figure is not a verdict to act on."""
    latency = ctx.report.get("latency") or {}
    measured = (latency.get("comparison") or {}).get("speedup")
    target = ctx.config.target_speedup
    if not latency.get("trusted") or measured is None or measured >= target:
        return None
    if len(ctx.resolves) >= ctx.config.prune.resolve_attempts:
        return None
    shift = (1 + ctx.aim_shift) * (target / measured) * (1 + RESOLVE_EXTRA) - 1
    print(f"profile: {measured:.2f}x is short of the {target:g}x target; pruning again with the search window's "
          f"goal raised by {shift:.1%} (prune.resolve_attempts {ctx.config.prune.resolve_attempts})")
    return {"measured": measured, "aim_shift": shift}


def run_pipeline(config: RunConfig, resume: bool = False, stages: list[Stage] | None = None) -> dict:
    requested = Path(config.out or default_run_dir(config))
    created = not requested.exists()
    run_dir = ensure_writable_dir(requested)
    stages = stages or default_stages()
    started = time.perf_counter()
    try:
        manifest = _read_manifest(run_dir, config) if resume else _new_manifest(config)
        # Compared as JSON reads it back (tuples such as input_shape come back as lists).
        if resume and manifest["config"] != json.loads(json.dumps(config.to_dict())):
            raise UserError(f"{run_dir} holds a run with different settings; resume with the same options or use a "
                            "new --out")
        # Model, weights and data are checked before the run directory is touched: bad input must not
        # clobber the manifest of a run already there.
        ctx: RunContext = build_context(config, run_dir)
    except BaseException:
        if created:  # the directory this run made for itself, still empty: a failed check leaves nothing
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    ctx.resolves = list(manifest.get("resolves", []))
    remove_stale_temporaries(run_dir)  # half-written files of a killed run
    write_json(run_dir / MANIFEST, manifest)
    timings = []
    restoring = resume
    while True:
        for stage in stages:
            record = manifest["stages"].get(stage.name)
            if restoring and record and record.get("done") and _stage_intact(run_dir, record):
                print(f"[{stage.name}] already done; restored from {run_dir}")
                stage.restore(ctx)
                timings.append({"name": stage.name, "seconds": record["seconds"], "resumed": True})
                continue
            restoring = False  # every stage after the first re-run one must run again
            print(f"[{stage.name}] ...")
            t0 = time.perf_counter()
            stage.run(ctx)
            seconds = time.perf_counter() - t0
            timings.append({"name": stage.name, "seconds": round(seconds, 3), "resumed": False,
                            "attempt": len(ctx.resolves) + 1})
            manifest["stages"][stage.name] = {"done": True, "seconds": round(seconds, 3),
                                              "outputs": {name: sha256(run_dir / name) for name in stage.outputs}}
            write_json(run_dir / MANIFEST, manifest)
        resolve = _resolve_after_short_profile(ctx)
        if resolve is None:
            break
        # Every stage runs again from the dense model; the manifest forgets the first attempt's stages
        # (a resume must not restore a finetune of the other plan) and keeps the shift for a resume.
        ctx.resolves.append(resolve)
        ctx.reset_to_dense()
        manifest["resolves"], manifest["stages"] = ctx.resolves, {}
        write_json(run_dir / MANIFEST, manifest)
    report = build_report(ctx, timings, time.perf_counter() - started)
    write_report(run_dir, report)
    return report
