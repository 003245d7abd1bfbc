"""One module per pipeline stage; each exposes `run(params, paths) -> metrics dict` used by the CLI."""
