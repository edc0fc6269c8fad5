"""The `tuneplane` command (typer), a module per command group.

`root` builds the app and holds the commands that run the stack here (`db`, `serve`, `up`);
`demo` is the end-to-end demo. The API commands talk to a running service: `login`,
`files`, `jobs` (with `follow`, its live progress), `models`, `deployments` and `admin`,
all through `client`, their one way to call the API and print its answers."""

from service.cli.root import app, main

__all__ = ["app", "main"]
