import sys

from emotalker.bake.cli import main

sys.exit(main())
