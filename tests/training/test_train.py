"""prepare(): the time-ordered split and where learned levels come from."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kernels.spec import default_spec
from training.synth import generate
from training.train import TrainSettings, prepare


def test_learned_levels_never_come_from_the_holdout() -> None:
    spec = default_spec()
    table = generate(3000, seed=5)  # sorted by event time
    zones = np.array(table.column("zone").to_pylist(), dtype=object)
    n = len(zones)
    zones[-200:] = "Brand-New-District"  # only in the latest rows: the holdout period
    table = table.set_column(table.schema.get_field_index("zone"), "zone", pa.array(zones))
    prep = prepare(table, spec, TrainSettings())
    assert len(prep.holdout_idx) == 600
    assert "Brand-New-District" not in prep.pipe.levels["zone"]
    # those rows are featurised with the unknown code, as production would see them
    z = spec.feature_names.index("zone")
    unknown = prep.pipe.unknown_code("zone")
    late = np.isin(prep.rows, np.arange(n - 200, n))
    assert (prep.X[late, z] == unknown).all()
    # the same value in the training rows is learned
    zones[:200] = "Brand-New-District"
    table = table.set_column(table.schema.get_field_index("zone"), "zone", pa.array(zones))
    assert "Brand-New-District" in prepare(table, spec, TrainSettings()).pipe.levels["zone"]


def test_settings_read_back_from_a_manifest_are_the_settings_trained_with() -> None:
    """``settings_dict`` is what a manifest records (JSON); ``retrain`` reads it back with
    ``settings_from_dict`` to train with production's own settings."""
    import json

    from training.train import settings_dict, settings_from_dict

    s = TrainSettings(num_leaves=31, max_rounds=77, quantiles=(0.2, 0.8), huber_delta=3.0)
    raw = json.loads(json.dumps(settings_dict(s)))
    assert settings_from_dict(raw) == s
    assert settings_from_dict({**raw, "from_a_newer_version": 1}) == s
    assert settings_from_dict({}) == TrainSettings()
