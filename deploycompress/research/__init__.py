"""Research building blocks: pure implementations of the pruning methods in ALGORITHMS.md §2-7.

Modules: ``pqi`` (PQ Index / SAP), ``ispasp`` (i-SpaSP selector), ``dcp`` (discrimination-aware
greedy channel selection), ``synaptic`` (synaptic strength), ``tetris`` (block sparsity by
reordering) and ``dsm`` (Dirichlet scale mixture prior as a MAP penalty). Import them explicitly.
"""
