"""Flex Template launcher entry point (``FLEX_TEMPLATE_PYTHON_PY_FILE``): ``stampflow run``."""

import sys

from pipeline.flex_template import main

if __name__ == "__main__":
    sys.exit(main())
