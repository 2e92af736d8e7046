"""`python -m standins.runpod`: the stand-in RunPod job API as a process."""

from standins.runpod.server import main

main()
