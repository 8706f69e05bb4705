"""``python -m medmask_store`` runs the command line."""

from medmask_store.cli.main import main

main()
