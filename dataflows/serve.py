"""`python -m dataflows.serve`: the HTTP scoring gateway, whose code lives with the other tools in
`dataflows.tools.serve` (this is the short name the README gives)."""

from dataflows.tools.serve import main

if __name__ == "__main__":
    raise SystemExit(main())
