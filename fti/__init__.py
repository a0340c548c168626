"""fti's command-line front end and demo-data helpers (not imported by the services)."""
