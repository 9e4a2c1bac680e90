"""Prediction: sliding windows with blending, scene streaming, vectorising."""
