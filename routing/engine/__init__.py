"""The decision engine: pure functions from (features, catalog, policy, predictor) to a Decision."""
