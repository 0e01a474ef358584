"""The citybrain control plane: catalog, blobs, API + console, jobs, flywheel, ingest, CLI."""
