"""Serving a trained model without RecFuse's training stack: inference.model loads what --export.model
writes (plain torch, numpy and xxhash)."""
