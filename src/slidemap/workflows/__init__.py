"""One module per command: the orchestration of each, read top to bottom.

A workflow checks its outputs against its inputs, calls the layers below (data, models, engine,
evaluation, training, report) and returns what it did; ``slidemap.api`` wraps it in a typed
result and ``slidemap.cli`` prints that.
"""
