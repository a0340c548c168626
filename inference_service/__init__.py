"""Inference service: raw records -> shared features + history lookups -> champion model."""
