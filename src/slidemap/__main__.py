"""``python -m slidemap`` runs the command line."""

from slidemap.cli import main

main()
