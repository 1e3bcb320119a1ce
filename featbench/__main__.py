"""`python -m featbench ...` (also what `torchrun -m featbench extract` runs)."""

from featbench.cli import main

if __name__ == "__main__":
    main()
