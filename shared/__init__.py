"""fti's shared package: the only code the three services have in common.

It holds the dataset spec, the raw-record normalisation, the scikit-learn
transformers used both to compute features and inside the model pipeline, and
the feature-table contract. It imports no service, no web framework and no
MLflow, so every image can install it and every process computes features the
same way.
"""

__version__ = "0.2.0"

__all__ = ["__version__"]
