"""`python -m tfvae`: the same as the `tfvae` command."""

import sys

from tfvae.cli import main

sys.exit(main())
