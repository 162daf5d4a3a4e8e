"""The JOOR API: ``client`` (auth, retries, pacing, pages), ``parse`` (JSON/XML envelopes), ``errors``."""
