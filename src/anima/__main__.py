import sys

from anima.cli import main

sys.exit(main())
