"""Transformer encoders over token sequences, input (batch, 64 tokens, 32 features):

- `make_blocks`: pre-norm blocks written with nn.MultiheadAttention, LayerNorm and an MLP;
- `make_encoder`: torch's nn.TransformerEncoder of nn.TransformerEncoderLayer.

What can be pruned exactly: whole attention heads and the MLP hidden width. The residual stream runs
through LayerNorm, which normalises over all its channels, so it stays dense (and says so).
"""
from torch import nn

TOKENS, FEATURES, WIDTH, HEADS, HIDDEN = 64, 32, 128, 8, 512


class Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class BlockTransformer(nn.Module):
    def __init__(self, num_classes: int = 10, depth: int = 2):
        super().__init__()
        self.embed = nn.Linear(FEATURES, WIDTH)
        # 64 tokens x (4*128^2 attention + 2*128*512 MLP) per layer: ~13M MACs a layer, enough
        # that matrix products, not the ~40 small ops of each layer, set the latency.
        self.blocks = nn.Sequential(*[Block(WIDTH, HEADS, HIDDEN) for _ in range(depth)])
        self.norm = nn.LayerNorm(WIDTH)
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, x):
        return self.fc(self.norm(self.blocks(self.embed(x))).mean(1))


class EncoderTransformer(nn.Module):
    def __init__(self, num_classes: int = 10, depth: int = 2):
        super().__init__()
        self.embed = nn.Linear(FEATURES, WIDTH)
        layer = nn.TransformerEncoderLayer(WIDTH, HEADS, HIDDEN, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth)
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, x):
        return self.fc(self.encoder(self.embed(x)).mean(1))


def make_blocks(num_classes: int = 10) -> nn.Module:
    return BlockTransformer(num_classes)


def make_encoder(num_classes: int = 10) -> nn.Module:
    return EncoderTransformer(num_classes)
