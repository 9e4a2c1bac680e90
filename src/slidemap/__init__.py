"""slidemap: map landslides from remote-sensing imagery and elevation data."""

__version__ = "0.1.0"
