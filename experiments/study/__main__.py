import sys

from experiments.study.run import main

sys.exit(main())
