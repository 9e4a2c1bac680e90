"""Training: losses and the pieces a training loop assembles."""
