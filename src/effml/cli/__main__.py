import sys

from effml.cli import main

sys.exit(main())
