import sys

from vift_plugin.cli import main

sys.exit(main())
