import sys

from gradscope.cli import main

sys.exit(main())
