"""The pre-inference predictor (see model.py); importing it first sets how OpenMP threads wait.

XGBoost and scikit-learn use OpenMP; its default busy-waiting threads slow training down by an
order of magnitude on a busy machine (measured: 60 rounds took 45 s instead of 0.8 s with two
threads on a loaded 2-core host). Passive waiting must be chosen before the runtime starts.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
