"""Evaluation on cached embeddings: zero-shot labelling, linear probing, cross-modal retrieval.

Every function takes arrays (vectors, label matrices, folds), so each is fast and testable
without a model or a store; the CLI (etp_search/cli/evaluate.py) reads those arrays from a store.
"""
