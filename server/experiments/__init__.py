"""Experiments: A/B and shadow tests of a candidate model against production.

:mod:`~server.experiments.assign` (sticky order-to-arm hash),
:mod:`~server.experiments.service` (start, stop, analyse, conclude over the store and the
registry), :mod:`~server.experiments.router` (the server follows the running experiment),
:mod:`~server.experiments.routes` (``/v1/admin/experiments``) and
:mod:`~server.experiments.cli` (``intellilog ab …``).
"""

__all__ = ["ARCHIVE", "CONTINUE", "MODES", "PROMOTE"]

# Names only: the CLI's parser imports this package before `serve` sets up the metrics
# (nothing here may import prometheus_client).
MODES = ("ab", "shadow")
#: The analysis' recommendations (training.abstats); conclude applies the first two.
PROMOTE, ARCHIVE, CONTINUE = "promote_to_production", "archive_candidate", "continue_testing"
