"""Moved to ``standins.ollama.server``; this name stays until every importer uses the new one."""

import sys

import standins.ollama.server as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
