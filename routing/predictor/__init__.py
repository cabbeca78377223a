"""The pre-inference predictor (XGBoost over (prompt, model) pairs) and its version registry."""
