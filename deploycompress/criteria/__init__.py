"""Research criteria as pipeline parts, one module per method (ALGORITHMS.md §3-5, §7).

Each module adapts a pure implementation from ``deploycompress.research`` to the criterion interface
of ``deploycompress.importance`` (``prepare(scoring)`` then ``criterion(group) -> scores``) and is
registered lazily there, so nothing here is imported unless its name is asked for:

- ``ispasp``: i-SpaSP selector (``--importance ispasp``)
- ``dcp``: discrimination-aware greedy selection (``--importance dcp``)
- ``synaptic``: synaptic strength (``--importance synaptic_strength``)
- ``dsm``: channel scores of a Dirichlet scale mixture prior (``--importance dsm``)

``blocks`` finds, for a group, the one layer that consumes its channels (the block the selectors
work on).
"""
