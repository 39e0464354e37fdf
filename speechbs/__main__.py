import sys

from speechbs.cli import main

sys.exit(main())
