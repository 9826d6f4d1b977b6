"""Release channels, one package each (kernel side, node routes, worker, wire models)."""
