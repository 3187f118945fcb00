"""Small test models, one file per architecture family, each with a `make(num_classes=...)` factory.

They are loaded the way a user's model is (`tests/archs/x.py:make`), so the tests exercise the same
path as `deploycompress run --model file.py:factory`. Sizes are chosen so that at batch 1 the
compute clearly outweighs ONNX Runtime's fixed per-operator cost (a few microseconds per node):
a model of a few dozen tiny ops can never run 2x faster however many channels go.
"""
