"""Inference: test-time augmentation, predictors and ensembles."""
