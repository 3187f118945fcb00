"""Text classifiers that take integer token ids, input (batch, 64 tokens):

- `make_cnn`: an nn.Embedding, two Conv1d over the sequence, max over time (TextCNN);
- `make_transformer`: token and position embeddings into torch's nn.TransformerEncoder.

The run feeds them int64 ids below the input embedding's 1000 entries, found by running the model.
"""
import torch
from torch import nn

VOCAB, TOKENS, WIDTH = 1000, 64, 128


class TextCNN(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        # 64 tokens x (128*256 + 256*256) x 5 taps: about 31M MACs, so the convs set the latency
        self.convs = nn.Sequential(nn.Conv1d(WIDTH, 256, 5, padding=2), nn.ReLU(),
                                   nn.Conv1d(256, 256, 5, padding=2), nn.ReLU())
        self.fc = nn.Linear(256, num_classes)

    def forward(self, ids):
        return self.fc(self.convs(self.embed(ids).transpose(1, 2)).amax(2))


class TextTransformer(nn.Module):
    def __init__(self, num_classes: int = 4, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.Embedding(TOKENS, WIDTH)  # called with positions, not the input: not the vocabulary
        layer = nn.TransformerEncoderLayer(WIDTH, 8, 512, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.fc(self.encoder(self.embed(ids) + self.position(positions)).mean(1))


def make_cnn(num_classes: int = 4) -> nn.Module:
    return TextCNN(num_classes)


def make_transformer(num_classes: int = 4) -> nn.Module:
    return TextTransformer(num_classes)
