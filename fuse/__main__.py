"""`python -m fuse ...` is the `fuse` command (torchrun -m fuse train ... launches it per rank)."""
from fuse.cli import main

main()
