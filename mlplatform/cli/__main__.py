"""`python -m mlplatform.cli`: the command line."""

from mlplatform.cli.main import main

main()
