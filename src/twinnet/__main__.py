"""``python -m twinnet`` (and ``torchrun -m twinnet``) runs the CLI."""

from .cli import main

raise SystemExit(main())
