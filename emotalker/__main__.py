import sys

from emotalker.cli.main import main

sys.exit(main())
