"""`python -m cachepi`."""

from cachepi.cli import main

main()
