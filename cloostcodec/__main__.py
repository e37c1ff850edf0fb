"""`python -m cloostcodec ...` (and `torchrun -m cloostcodec train ...`) run the CLI."""
from .cli import main

main(prog_name="cloost")
