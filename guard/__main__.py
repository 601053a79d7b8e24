import sys

from guard.app.cli import main

sys.exit(main())
