"""The shared core every stage imports: config and resolvers, errors, cached-artefact keys and atomic writes, locks, the hub, model loading."""
