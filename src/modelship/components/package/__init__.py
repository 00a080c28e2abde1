"""The package stage: a Bento of the optimized model and, where a builder exists, an OCI image."""
