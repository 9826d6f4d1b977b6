"""Code jobs: owner-approved notebooks and scripts run in a sandbox beside the data (docs/code_jobs.md)."""
