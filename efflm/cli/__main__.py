import sys

from efflm.cli import main

sys.exit(main())
