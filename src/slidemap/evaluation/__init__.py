"""Evaluation: one confusion matrix, one scorer, spatial cross-validation folds."""
