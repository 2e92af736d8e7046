"""`python -m standins.ollama`: the stand-in Ollama as a process."""

import sys

from standins.ollama.server import main

sys.exit(main())
