"""`python -m etp_search` is the `etp-search` command."""

from etp_search.cli import main

main()
