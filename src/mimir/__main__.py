import sys

from mimir.cli import main

sys.exit(main())
