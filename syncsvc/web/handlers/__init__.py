"""Request handlers, one module per audience (patients, host apps, operators)."""
