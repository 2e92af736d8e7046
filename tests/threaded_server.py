"""Moved to ``standins._server``; this name stays until every importer uses the new one."""

import sys

import standins._server as _moved

sys.modules[__name__] = _moved
