"""Moved to ``standins.runpod.server``; this name stays until every importer uses the new one."""

import sys

import standins.runpod.server as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
