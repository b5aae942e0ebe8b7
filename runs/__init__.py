"""Run registry (SQLite) and job supervisor: where every run's state and history live."""
