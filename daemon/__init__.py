"""The acquired service: configuration, manifests, job store, scheduler, inbox, control socket, CLI."""
