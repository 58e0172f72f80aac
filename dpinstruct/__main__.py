"""`python -m dpinstruct ...` is the `dpinstruct` command."""
import sys

from dpinstruct.cli import main

sys.exit(main())
