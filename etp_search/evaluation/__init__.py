"""Evaluation on cached embeddings: zero-shot labelling, linear probing, cross-modal retrieval.

``metrics``, ``zeroshot``, ``probe`` and ``retrieval`` take arrays (vectors, label matrices, folds),
so each is fast and testable without a model or a store; ``hubness`` measures how often each item
is among the queries' top k (k-occurrence) and offers centring and CSLS as corrections.
``on_store`` runs them on an open store (split and task rows, a baseline store aligned by record
id, free classes matched to label keys, prompt models loaded once per checkpoint) and returns typed
results; the CLI (etp_search/cli/evaluate.py) and benchmarks/bench_results.py only call it and print.
"""
