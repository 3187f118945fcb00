"""Why a group Torch-Pruning cannot follow is left dense, in words a user can act on.

Some ops DepGraph maps as if each channel stayed itself (F.glu, a pixel unshuffle), or maps wrongly
(a transpose, a split concatenated again, an in-place slice write, a reshape to sizes fixed in
forward). The verification trial catches most of them, with a bare "IndexError: index 192 is out of
bounds" or "shape '[2, 65, 3, 3, 64]' is invalid"; these functions say which op it was and what to
write instead. GroupGraph (graph.py) calls them.
"""
from __future__ import annotations

import torch_pruning as tp


def passes_op(tp_group, *grad_fns: str) -> bool:
    """Whether a DepGraph group passes an op traced from one of these autograd functions (DepGraph keeps
    ops it has no mapping for as elementwise, named by their grad_fn: "GluBackward0")."""
    return any(str(getattr(item.dep.target.module, "_grad_fn", "")).startswith(grad_fns) for item in tp_group)


def unfollowed_op_reason(group) -> str | None:
    """Why a group that passes an op whose channel mapping Torch-Pruning does not follow cannot be pruned:
    F.glu / nn.GLU, or a pixel unshuffle. GLU halves the channels, and Torch-Pruning maps it as an
    elementwise op (the same channels in and out), so its consumers would lose the wrong inputs. The
    verification trial may not notice: a removal that happens to take the same offsets from both halves
    is exact."""
    if passes_op(group, "GluBackward"):
        return ("it feeds F.glu / nn.GLU, whose halving Torch-Pruning does not follow (written as "
                "`a, b = x.chunk(2, dim=1); a * torch.sigmoid(b)` it is pruned)")
    # The same for a pixel unshuffle (one channel becomes r*r; tp_fixes maps the shuffle): the trial fails
    # on shapes alone, but with a bare "Given groups=1, weight of size ..., expected input ... to have 20
    # channels, but got 24".
    if passes_op(group, "PixelUnshuffleBackward"):
        return ("it feeds a pixel unshuffle (nn.PixelUnshuffle), which spreads each channel over r x r; "
                "Torch-Pruning follows it as if each channel stayed one channel")
    return None


def unfollowed_mapping_note(group, reason: str) -> str:
    """Why a trial broke, where the group's channels pass an op whose index mapping Torch-Pruning gets
    wrong, so the user learns what to change rather than a bare "IndexError: index 192 is out of bounds".

    A transpose or permute: DepGraph maps it as elementwise, so past one it prunes whatever axis now sits
    where the channels were (an MLP-Mixer's stream reached its token-mixing Linears' 64 token inputs as if
    they were its 128 channels). A split whose parts are concatenated again (YOLOv8's C2f, Res2Net,
    FasterNet's partial conv): the concat's offsets come out wrong (Torch-Pruning's own YOLOv8 example
    replaces C2f's chunked conv with two convs, which are pruned here too). An in-place write to a channel
    slice (`x[:, :k] = conv(x[:, :k])`): not followed at all. A reshape to sizes written in forward (a
    timm-style qkv split into heads): the trial's bare "shape '[2, 65, 3, 3, 64]' is invalid"."""
    if not reason.startswith("pruning breaks the model"):
        return ""
    if "IndexError" in reason and passes_op(group.tp_group, "TransposeBackward", "PermuteBackward"):
        return (" (its channels pass a transpose or permute, which Torch-Pruning follows as if the channel axis "
                "stayed in place)")
    ops = {type(item.dep.target.module) for item in group.tp_group}
    if tp.ops._SplitOp in ops and tp.ops._ConcatOp in ops:
        return (" (its channels pass a split whose parts are concatenated again, as in YOLOv8's C2f or Res2Net, and "
                "Torch-Pruning maps the concat's offsets wrongly there; where the split cuts one conv's output in "
                "two, two convs in its place are pruned)")
    if passes_op(group.tp_group, "torch::autograd::CopySlices"):
        return (" (its channels are written in place through a slice, `x[:, :k] = ...`, which Torch-Pruning does "
                "not follow)")
    if "is invalid for input of size" in reason:
        return (" (forward reshapes these channels to sizes fixed in the code, as a timm-style attention splits "
                "its qkv Linear into heads with reshape(B, N, 3, heads, C // heads); those sizes do not shrink "
                "with the channels. Attention written with nn.MultiheadAttention has its heads pruned whole)")
    return ""
