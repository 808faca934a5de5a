"""The application: engines, batch scoring, CLI (and the HTTP server)."""
