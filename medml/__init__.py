"""medml: train, evaluate and ship image classifiers for imbalanced medical imaging data.

The package is a plain library of step functions (ingest, validate, split, preprocess, train,
evaluate, register). The CLI, DVC and Airflow all call the same functions; nothing here
imports Airflow.
"""

__version__ = "0.1.0"
