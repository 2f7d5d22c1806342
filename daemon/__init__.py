"""The acquired service: config, manifests, job store, scheduler, inbox, control socket, CLI."""
