"""`python -m gdexp.analysis [--experiment NAME] [--sweep ID|NAME|latest|all] [--out DIR]
[--tracking-uri URI] [--source auto|table|runs] [--no-mlflow]`: the report of a sweep (see
gdexp.analysis.report)."""

import sys

from gdexp.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
