import sys

from mscvision.cli import main

sys.exit(main())
