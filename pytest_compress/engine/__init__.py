"""The engine: recipes, tensor- and model-level quantization and pruning, measuring.

Uses torch, never pytest. See ARCHITECTURE.md for the layers.
"""
