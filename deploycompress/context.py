"""What the stages share: one explicit object handed to every stage, never a global."""
from __future__ import annotations

import copy
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import data as data_mod
from . import multi_output, synthetic_data
from .allocation.base import model_digest
from .errors import UserError, first_line
from .fileio import atomic_write
from .graph import ChannelMasks, GroupGraph, Plan
from .models import loading, zoo
from .recipe import RunConfig
from .training import accuracy, fit, requires_grad_while

log = logging.getLogger("deploycompress")

DENSE_EPOCHS = 15
# 2: the built-in sets hold out a validation split, which the dense models no longer train on.
ZOO_CACHE_VERSION = 2


def working_copy(dense: nn.Module) -> nn.Module:
    """A trainable copy of the (frozen) dense model: what the stages prune and finetune."""
    model = copy.deepcopy(dense)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@dataclass
class RunContext:
    config: RunConfig
    run_dir: Path
    dense: nn.Module
    model: nn.Module  # the working copy: masked while pruning/finetuning, physically small after shrink
    data: data_mod.DataBundle
    example_input: torch.Tensor  # one sample (batch 1); exports have a dynamic batch axis
    calibration_count: int = 0  # how many training samples calibrate: see calibration_count()
    graph: GroupGraph | None = None
    plan: Plan | None = None
    masks: ChannelMasks | None = None
    report: dict = field(default_factory=dict)
    # Re-solves after the profile measured short of the target (pipeline.run_pipeline): each entry's
    # measured speedup and the window shift the next prune uses (AllocationProblem.aim_shift).
    resolves: list[dict] = field(default_factory=list)

    @property
    def aim_shift(self) -> float:
        return self.resolves[-1]["aim_shift"] if self.resolves else 0.0

    def reset_to_dense(self) -> None:
        """A fresh working copy of the dense model, for pruning again from the start."""
        if self.masks is not None:
            self.masks.remove()
        self.graph, self.plan, self.masks = None, None, None
        self.model = working_copy(self.dense)

    @property
    def calibration(self) -> torch.Tensor:
        return self.data.calibration(self.calibration_count or self.config.prune.calibration_samples)

    def apply_masks(self, plan: Plan) -> None:
        """(Re)build the group graph on the working model and mask what `plan` removes."""
        if self.masks is not None:
            self.masks.remove()
        # a plan names every group the prune stage's verified graph kept, and only those
        self.graph = GroupGraph(self.model, self.example_input, self.config.ignore, only=plan)
        self.plan = plan
        self.masks = ChannelMasks(self.graph, plan)


def _load_data(config: RunConfig, entry: zoo.ZooModel | None) -> data_mod.DataBundle | None:
    source = config.data
    if source is None and entry is not None:
        source = entry.dataset
    if source in (None, "none"):
        return None
    if source in data_mod.BUILTIN_DATASETS:
        return data_mod.BUILTIN_DATASETS[source](seed=0)
    if source.endswith(".npz"):
        return data_mod.load_npz(source, seed=config.seed)
    if ":" in source:
        return data_mod.load_factory_data(source, seed=config.seed)
    raise UserError(f"--data {source!r}: expected a built-in dataset ({', '.join(data_mod.BUILTIN_DATASETS)}), "
                    "an .npz file, file.py:factory or 'none'")


def _check_ignore(pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as exc:
        raise UserError(f"--ignore {pattern!r} is not a valid regular expression: {exc}") from None


def _trained_zoo_model(entry: zoo.ZooModel, data: data_mod.DataBundle, seed: int) -> nn.Module:
    """Zoo models are trained once on their built-in data and cached, so later runs start pruning."""
    model = entry.build(num_classes=data.num_classes or 10)
    path = loading.cache_dir() / "zoo" / f"{entry.name}-{data.name}-seed{seed}-v{ZOO_CACHE_VERSION}.pt"
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
            log.warning("cached weights %s are unreadable; retraining", path)
    print(f"Training the dense {entry.name} on {data.name} once ({DENSE_EPOCHS} epochs); cached at {path}")
    fit(model, data, DENSE_EPOCHS, lr=3e-3, seed=seed, description=f"train {entry.name}")
    atomic_write(path, lambda p: torch.save(model.state_dict(), p))
    return model.eval()


# The lookups whose input is integer ids: a model that feeds its input to one is fed token ids.
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def _example_input(model: nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(one input sample, the model's output on it, the token-id range or None). A float tensor, unless
    the model looks its input up in an nn.Embedding: then int64 token ids, below the number of entries of
    the embedding that reads the input (the smallest of those it calls, where none reads it directly).
    Which is which is found by running the model, as a user's forward may do anything first; a model
    that takes floats and casts them to ids itself (`self.emb(x.long())`) is a token model too."""
    example = torch.zeros((1, *shape[1:]))
    as_float = None
    try:
        with torch.no_grad():
            out = model(example)
        if not _casts_input_to_ids(model, example):
            return example, out, None
    except Exception as exc:  # noqa: BLE001 - a shape mismatch surfaces as any of several errors
        as_float = first_line(exc)
        if not _looks_up_embedding(model, as_float):
            hint = _input_hint(model, as_float) or _channels_last_hint(model, shape)
            raise UserError(f"input shape {shape} does not fit the model: {as_float}{hint}") from None
    tokens = example.long()
    called: list[tuple[bool, int]] = []  # (reads the model's input itself, entries) per embedding call

    def record(module, inputs):
        called.append((inputs[0] is tokens, module.num_embeddings))

    embeddings = [m for m in model.modules() if isinstance(m, EMBEDDINGS)]
    handles = [m.register_forward_pre_hook(record) for m in embeddings]
    try:
        with torch.no_grad():
            out = model(tokens)
    except Exception as exc:  # noqa: BLE001 - as above: one line, whatever the model raises
        first = first_line(exc)
        raise UserError(f"input shape {shape} does not fit the model: {first} (with int64 token ids, as its input "
                        "goes into an nn.Embedding)") from None
    finally:
        for h in handles:
            h.remove()
    if not called:  # it takes integers, but not as an embedding's ids: no range to draw them from
        raise UserError(f"input shape {shape} does not fit the model: {as_float or 'no embedding reads its input'}")
    direct = [entries for reads_input, entries in called if reads_input]
    return tokens, out, min(direct or [entries for _, entries in called])


def _to_float32(model: nn.Module) -> str | None:
    """Converts a float64 or half-precision model to float32, in place; what was converted, or None.
    The run feeds float32 inputs and exports a float32 model (what ONNX Runtime's CPU kernels run), and a
    float64 model met its first float32 input with "Input type (float) and bias type (double) should
    be the same", reported as an input shape that does not fit."""
    others = sorted({str(t.dtype).removeprefix("torch.") for t in [*model.parameters(), *model.buffers()]
                     if t.is_floating_point() and t.dtype != torch.float32})
    if not others:
        return None
    model.float()
    return f"parameters and buffers converted from {', '.join(others)} to float32, as the exported model runs"


def _check_batch_and_autograd(model: nn.Module, example: torch.Tensor) -> None:
    """One line when the model runs on one sample but not on two, or when its forward builds no autograd
    graph (it runs under torch.no_grad or inference_mode itself). Calibration, finetuning and the
    exported model (its batch axis is dynamic) all feed batches, and a batch-fixed model ended the run in
    a traceback from a shape error deep in the search; Torch-Pruning traces the model through autograd
    and the finetune needs its gradients, and a no_grad forward read "nothing to prune" as if it had no
    layers. One forward of two samples answers both, with every parameter briefly requiring grad (a
    frozen backbone is not a forward without autograd) and each flag restored."""
    hint = ("its forward fixes the batch size, e.g. x.view(1, -1); write x.flatten(1) or x.view(x.size(0), -1): "
            "deploycompress feeds batches")
    params = [p for p in model.parameters() if p.is_floating_point()]
    try:
        with torch.enable_grad(), requires_grad_while(params, True):
            out = model(torch.cat([example, example]))
    except Exception as exc:  # noqa: BLE001 - whatever the model raises, one line
        raise UserError(f"the model runs on a batch of 1 but not of 2: {first_line(exc)} ({hint})") from None
    if not isinstance(out, torch.Tensor):
        return  # build_context says what a forward must return
    if out.dim() == 0 or out.shape[0] != 2:
        raise UserError(f"the model returns shape {tuple(out.shape)} for a batch of 2 samples, not one row per "
                        f"sample ({hint})")
    if params and out.is_floating_point() and not out.requires_grad:
        raise UserError("the model's forward builds no autograd graph (it runs under torch.no_grad or "
                        "torch.inference_mode itself): deploycompress traces the model and finetunes it through "
                        "autograd; take the decorator or context manager out of forward")


def _casts_input_to_ids(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether the model, fed floats, looks up exactly their values as ids in an embedding: on random
    float calibration inputs it would then read negative ids. Three probes of whole numbers (zeros,
    ones, alternating 0/1), so an embedding read at ids computed some other way (a codebook's nearest
    entry, positions from arange) does not count."""
    embeddings = [m for m in model.modules() if isinstance(m, EMBEDDINGS)]
    if not embeddings:
        return False
    probes = [example, torch.ones_like(example),
              (torch.arange(example.numel()) % 2).reshape(example.shape).to(example.dtype)]
    for probe in probes:
        ids = probe.long()
        read: list[bool] = []
        handles = [m.register_forward_pre_hook(
            lambda _m, inputs: read.append(inputs[0].shape == ids.shape and torch.equal(inputs[0], ids)))
            for m in embeddings]
        try:
            with torch.no_grad():
                model(probe)
        except Exception:  # noqa: BLE001 - a probe the model refuses decides nothing: not a cast
            return False
        finally:
            for h in handles:
                h.remove()
        if not any(read):
            return False
    return True


def _looks_up_embedding(model: nn.Module, error: str) -> bool:
    embeds = any(isinstance(m, EMBEDDINGS) for m in model.modules())
    return embeds and ("indices" in error or "Long" in error)


def _input_hint(model: nn.Module, error: str) -> str:
    """Why a model that takes more than one input fails on the one tensor every run feeds it: said,
    not left to the error."""
    if "missing" in error and "required positional argument" in error:
        return (" (deploycompress feeds forward one tensor of --input-shape; models that take several inputs "
                "are not supported: wrap the model in a module whose forward takes one)")
    return ""


def _looks_channels_last(sample: tuple[int, ...]) -> bool:
    """(H, W, C) image samples: a last axis of 1, 3 or 4 channels after two larger spatial ones."""
    return len(sample) == 3 and sample[-1] in (1, 3, 4) and min(sample[:2]) > 4


def _channels_last_hint(model: nn.Module, shape: tuple[int, ...]) -> str:
    """Images saved channels-last (as PIL, OpenCV and TensorFlow hold them) for a model that reads
    (N, C, H, W): the error alone says "expected input[1, 32, 32, 3] to have 3 channels, but got 32"."""
    if not _looks_channels_last(tuple(shape[1:])):
        return ""
    first = (1, shape[-1], *shape[1:-1])
    try:
        with torch.no_grad():
            model(torch.zeros(first))
    except Exception:  # noqa: BLE001 - the hint is only given where channels first is what the model runs on
        return ""
    return (f" (this shape is channels-last; the model runs on {','.join(map(str, first))}, channels first: "
            "transpose the inputs to (N, C, H, W), x.transpose(0, 3, 1, 2))")


# prune.calibration_budget_s never cuts the calibration samples below this many
CALIBRATION_FLOOR = 64


def calibration_count(dense: nn.Module, data: data_mod.DataBundle, config: RunConfig) -> tuple[int, str | None]:
    """How many training samples calibrate (SPDY's loss, BatchNorm re-estimation), and a note when
    prune.calibration_budget_s cut them: the dense model is timed on a few samples, and the configured
    count is halved until one pass over it fits the budget."""
    prune = config.prune
    wanted = min(prune.calibration_samples, len(data.x_train))
    if not prune.calibration_budget_s or wanted <= CALIBRATION_FLOOR:
        return wanted, None
    probe = data.x_train[:8]
    with torch.no_grad():
        dense(probe[:1])  # warm-up: the first call allocates
        start = time.perf_counter()
        dense(probe)
        per_sample = (time.perf_counter() - start) / len(probe)
    full = per_sample * wanted
    count = wanted
    while count > CALIBRATION_FLOOR and count * per_sample > prune.calibration_budget_s:
        count = max(CALIBRATION_FLOOR, count // 2)
    if count == wanted:
        return wanted, None
    return count, (f"calibration on the first {count} of {wanted} training samples: one pass of the dense model "
                   f"over all {wanted} takes about {full:.0f} s here, over prune.calibration_budget_s "
                   f"({prune.calibration_budget_s:g} s), and SPDY's search makes about {prune.spdy_evaluations} "
                   "such passes")


def _data_free_inputs(dense: nn.Module, shape: tuple[int, ...], vocab: int | None,
                      config: RunConfig) -> tuple[data_mod.DataBundle, str | None]:
    """Calibration inputs without data: Gaussian noise (token ids below `vocab`), synthesised into inputs
    that give the model's trained BatchNorms their statistics where it has any (synthetic_data.py), with
    the line saying so."""
    noise = data_mod.random_data(shape, count=max(256, config.prune.calibration_samples), seed=config.seed,
                                 vocab=vocab)
    budget = config.prune.synthetic_budget_s
    cache = None  # the weights are hashed only where inputs are synthesised
    if budget > 0 and synthetic_data.trained_norms(dense):
        cache = (loading.cache_dir() / "synthetic" / f"{model_digest(dense, noise.x_train[:1])}-seed{config.seed}"
                 f"-budget{budget:g}-count{len(noise.x_train) + len(noise.x_test)}.pt")
    synthesised = synthetic_data.synthesize(dense, noise, budget, config.seed, cache)
    return synthesised if synthesised is not None else (noise, None)


def build_context(config: RunConfig, run_dir: Path) -> RunContext:
    torch.manual_seed(config.seed)
    entry = loading.zoo_entry(config.model)
    if entry is None and loading.is_zoo_name(config.model):
        loading.check_not_a_file(config.model)
        zoo.model_registry.get(config.model)  # raises the "unknown model, did you mean" error
    if entry is None:
        loading.check_spec(config.model)
    _check_ignore(config.ignore)
    data = _load_data(config, entry)
    shape = config.input_shape or (data.input_shape if data is not None else None) or (entry.input_shape if entry else None)
    if shape is None:
        raise UserError("--input-shape is required when neither the data nor a zoo model says it (e.g. 1,3,224,224)")
    if data is not None and tuple(shape[1:]) != tuple(data.input_shape[1:]):
        sample = tuple(data.input_shape[1:])
        transposed = _looks_channels_last(sample) and tuple(shape[1:]) == (sample[-1], *sample[:-1])
        raise UserError(f"--input-shape {','.join(map(str, shape))} does not match the data's samples {sample}"
                        + (": they are channels-last; save the data's x as x.transpose(0, 3, 1, 2)" if transposed else ""))
    num_classes = data.num_classes if data is not None else None
    weights_note = None
    if entry is not None and config.weights is None:
        if data is None or not data.has_labels:
            raise UserError(f"zoo model {entry.name} has no trained weights for unlabelled data; pass --weights")
        dense = _trained_zoo_model(entry, data, config.seed)
    else:
        dense = entry.build(num_classes=num_classes or 10) if entry else loading.build_user_model(config.model, num_classes)
        if config.weights:
            weights_note = loading.load_weights(dense, config.weights)
    dense.eval()
    setup_notes: list[str] = []  # what setting the run up changed: printed now, and report.json "notes"

    def note(text: str | None) -> None:
        if text:
            print(f"model: {text}")
            setup_notes.append(text)

    note(weights_note)

    note(_to_float32(dense))
    baked = loading.bake_reparametrizations(dense)
    note(f"weight reparametrizations baked into plain weights before pruning, the function unchanged "
         f"(Torch-Pruning cannot prune them; the finetune trains the plain weights): {', '.join(baked)}"
         if baked else None)
    example, out, vocab = _example_input(dense, tuple(shape))
    layout = multi_output.output_layout(out, len(example), f"--model {config.model}")
    if layout is not None:
        several = len(layout.names) > 1
        if several and data is not None and data.has_labels:
            raise UserError(f"--model {config.model} returns {len(layout.names)} outputs ({layout.describe()}) and "
                            f"--data {config.data or data.name} has labels, which score one output: save the "
                            "data's x alone (no y) and each output is distilled from the dense model")
        multi_output.flatten_outputs(dense, layout)
        note(f"forward returns {len(layout.names)} outputs ({layout.describe()}): each is distilled from the "
             "dense model on its own, and the ONNX model returns them as outputs of their own" if several else
             f"forward returns its output in a {type(out).__name__}: the ONNX model's output is named {layout.names[0]}")
        with torch.no_grad():
            out = dense(example)
    _check_batch_and_autograd(dense, example)
    if data is None:
        data, line = _data_free_inputs(dense, tuple(shape), vocab, config)
        note(line)
    elif vocab is not None:
        data = data_mod.as_token_ids(data, vocab, f"--data {config.data or data.name}")
    elif data.integer_inputs and data.x_train.max() > 1:
        note(f"x_train holds integers ({data.integer_inputs}), fed to the model as float32 as they are, "
             "not scaled: a model trained on [0, 1] inputs needs x / 255 saved instead (accuracy.dense shows it)")
    if data.has_labels and (out.dim() != 2 or (layout is not None and len(layout.shapes[0]) != 1)):
        # The labels are one class per sample: cross-entropy, accuracy and the finalists' scores need (batch, classes).
        returned = tuple(out.shape) if layout is None else (len(example), *layout.shapes[0])
        raise UserError(f"--model {config.model}: with labelled data the model must return class scores of shape "
                        f"(batch, classes); it returns {returned} (flatten them in forward)")
    if data.has_labels:
        top = int(max(data.y_train.max(), data.y_test.max()))
        if top >= out.shape[1]:
            raise UserError(f"labels go up to {top} but the model has {out.shape[1]} outputs")
    for p in dense.parameters():
        p.requires_grad_(False)
    count, cut = calibration_count(dense, data, config)
    note(cut)
    ctx = RunContext(config, run_dir, dense, working_copy(dense), data, example, count)
    ctx.report["input"] = {"shape": list(shape), "dtype": str(example.dtype).removeprefix("torch."),
                           "token_ids_below": vocab}
    ctx.report["calibration_samples"] = count
    ctx.report["setup_notes"] = setup_notes  # report.json "notes", before the prune stage's
    ctx.report["accuracy"] = {"dense": accuracy(dense, data.x_test, data.y_test), "compressed": None}
    return ctx
