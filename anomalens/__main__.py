"""`python -m anomalens ...` runs the command line."""

from anomalens.cli import app

app(prog_name="anomalens")
