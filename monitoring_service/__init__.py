"""The monitor: drift of served records against the model's reference profile (issue: watch the model).

Reads the prediction log and the registry's reference profile, never another service's code: the
boundary test holds it to ``shared`` like the three pipelines."""
