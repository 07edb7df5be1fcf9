"""`python -m harness.launch` is `harness launch`."""

from harness.launch.commands import main

main()
