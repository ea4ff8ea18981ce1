"""``python -m twinnet`` (and ``torchrun -m twinnet``) runs the CLI."""

from twinnet.cli import main

raise SystemExit(main())
