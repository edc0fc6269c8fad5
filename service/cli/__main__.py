"""`python -m service.cli`: the `tuneplane` command."""

from service.cli.root import main

if __name__ == "__main__":
    main()
